"""taskiq with taskiq-redis, for the distributed scenario (runs in taskiq's own virtualenv).

Broker: taskiq-redis's ``RedisStreamBroker`` (a Redis stream read by a consumer group,
acked once the result is saved), results in ``RedisAsyncResultBackend``. Worker: taskiq's
CLI, ``taskiq worker taskiq_queue:broker --workers 1 --log-level WARNING`` (at INFO it
logs a line per task; Murmur's worker logs none), with this file importable and
``BENCH_PEER`` set; a ``WORKER_STARTUP`` handler prints ``bench-worker-ready``. Caller:
``python taskiq_queue.py`` (see ``_queue_caller``): a batch sends every task (``.kiq``,
at most ``SEND_SLOTS`` at once), then awaits the results in order (``wait_result``, which
polls every ``poll_s`` seconds). Keys: the stream ``<prefix>:tasks`` (consumer group
``<prefix>``, its autoclaim lock ``autoclaim:<prefix>:...``) and the results
``<prefix>:<task id>``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from _queue_caller import config, serve
from taskiq import TaskiqEvents, TaskiqState
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

CONFIG = config()
PREFIX: str = CONFIG["prefix"]
POLL_S: float = CONFIG.get("poll_s", 0.01)
SEND_SLOTS = 50

broker = RedisStreamBroker(
    CONFIG["url"], queue_name=f"{PREFIX}:tasks", consumer_group_name=PREFIX
).with_result_backend(
    RedisAsyncResultBackend(CONFIG["url"], prefix_str=PREFIX, result_ex_time=3600)
)


@broker.task(task_name="noop")
async def noop(x: int) -> int:
    return x


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def _ready(state: TaskiqState) -> None:
    print("bench-worker-ready", flush=True)


async def _setup() -> None:
    await broker.startup()


async def _result(task: Any) -> int:
    result = await task.wait_result(check_interval=POLL_S)
    if result.is_err:
        raise RuntimeError(f"task failed: {result.error!r}")
    value: int = result.return_value
    return value


async def _batch(ids: list[int]) -> list[int]:
    slots = asyncio.Semaphore(SEND_SLOTS)

    async def send(x: int) -> Any:
        async with slots:
            return await noop.kiq(x)

    tasks = await asyncio.gather(*(send(x) for x in ids))
    return [await _result(task) for task in tasks]


async def _one(x: int) -> int:
    return await _result(await noop.kiq(x))


async def _close() -> None:
    await broker.shutdown()


if __name__ == "__main__":
    sys.exit(serve(_setup, _batch, _one, _close, dists=("taskiq", "taskiq-redis", "redis")))
