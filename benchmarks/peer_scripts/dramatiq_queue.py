"""dramatiq on Redis or RabbitMQ, for the distributed scenario (runs in its own virtualenv).

Broker: ``RedisBroker(namespace=<prefix>)``, or ``RabbitmqBroker`` when ``BENCH_PEER``
says ``"broker": "rabbit"`` (the queue ``<prefix>`` and its ``.DQ``/``.XQ`` queues);
results in a Redis ``RedisBackend`` either way (dramatiq has no RabbitMQ result backend),
keys ``<prefix>-results:...``. Worker: dramatiq's CLI, ``dramatiq dramatiq_queue
--processes 1 --threads T`` with this file importable and ``BENCH_PEER`` set; it logs
"Worker process is ready for action." when it consumes. Caller: ``python
dramatiq_queue.py`` (see ``_queue_caller``): a batch sends every message
(``actor.send``), then blocks on each result in order (``Message.get_result(block=True)``,
a blocking pop on Redis: no polling).
"""

from __future__ import annotations

import sys
from typing import Any

import dramatiq
from _queue_caller import config, serve
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

CONFIG = config()
PREFIX: str = CONFIG["prefix"]
WAIT_MS = 300_000

if CONFIG.get("broker") == "rabbit":
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker: Any = RabbitmqBroker(url=CONFIG["rabbit_url"])
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=CONFIG["url"], namespace=PREFIX)
results = RedisBackend(
    url=CONFIG["url"], namespace=f"{PREFIX}-results", use_namespace_prefix_keys=True
)
broker.add_middleware(Results(backend=results))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop", queue_name=PREFIX, store_results=True, max_retries=0)
def noop(x: int) -> int:
    return x


def _setup() -> None:
    pass


def _batch(ids: list[int]) -> list[int]:
    messages = [noop.send(x) for x in ids]
    return [m.get_result(block=True, timeout=WAIT_MS) for m in messages]


def _one(x: int) -> int:
    result: int = noop.send(x).get_result(block=True, timeout=WAIT_MS)
    return result


def _close() -> None:
    broker.close()


if __name__ == "__main__":
    sys.exit(serve(_setup, _batch, _one, _close, dists=("dramatiq", "redis")))
