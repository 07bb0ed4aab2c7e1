"""celery on Redis (broker and result backend), for the distributed scenario (runs in
celery's own virtualenv).

Worker: ``python celery_queue.py worker ARGS`` — ``app.worker_main`` (what the ``celery
worker`` command runs) with ARGS (pool, concurrency, prefetch multiplier), without gossip,
mingle, heartbeats or remote control (none of which a no-op task needs) and at log level
WARNING (celery logs two lines per task at INFO; Murmur's worker logs none); its
``worker_ready`` signal prints ``bench-worker-ready``. Caller: ``python celery_queue.py``
(see ``_queue_caller``): a batch is a ``group`` applied at once and ``GroupResult.get()``
(results arrive through the Redis backend's pub/sub), a single task ``delay(x).get()``.
Keys: kombu's and the result backend's ``global_keyprefix`` is ``<prefix>:``, and the
queue is ``<prefix>``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from _queue_caller import config, serve
from celery import Celery, group
from celery.signals import worker_ready

CONFIG = config()
PREFIX: str = CONFIG["prefix"]
WAIT_S = 300

app = Celery("bench", broker=CONFIG["url"], backend=CONFIG["url"])
app.conf.update(
    broker_transport_options={"global_keyprefix": f"{PREFIX}:"},
    result_backend_transport_options={"global_keyprefix": f"{PREFIX}:"},
    task_default_queue=PREFIX,
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    result_expires=3600,
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")
def noop(x: int) -> int:
    return x


@worker_ready.connect
def _ready(**_: Any) -> None:
    # Straight to fd 1: the worker sends sys.stdout to its logger.
    os.write(1, b"bench-worker-ready\n")


def _setup() -> None:
    app.connection_for_write().ensure_connection(max_retries=3)


def _batch(ids: list[int]) -> list[int]:
    result: list[int] = group(noop.s(x) for x in ids).apply_async().get(timeout=WAIT_S)
    return result


def _one(x: int) -> int:
    result: int = noop.delay(x).get(timeout=WAIT_S)
    return result


def _close() -> None:
    app.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        argv = ["worker", "--loglevel", "WARNING", "--without-gossip", "--without-mingle"]
        argv += ["--without-heartbeat", *sys.argv[2:]]
        app.worker_main(argv)
        sys.exit(0)
    sys.exit(serve(_setup, _batch, _one, _close, dists=("celery", "kombu", "redis")))
