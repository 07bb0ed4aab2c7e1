"""arq on Redis, for the distributed scenario (runs in arq's own virtualenv).

Worker: ``python arq_queue.py worker`` — ``arq.run_worker(WorkerSettings)``, what arq's
CLI runs, with logging at WARNING (the CLI logs two lines per job at INFO, and Murmur's
worker logs none); ``on_startup`` prints ``bench-worker-ready``. ``max_jobs`` and
``poll_delay`` come from ``BENCH_PEER``: arq's defaults (10 jobs, a 0.5 s poll of the
queue) ran ~4x slower here, with a 0.5 s round trip. Caller: ``python arq_queue.py`` (see
``_queue_caller``): a batch enqueues every job (``ArqRedis.enqueue_job``, at most
``ENQUEUE_SLOTS`` at once), then awaits their results in order (``Job.result``, which
polls every ``poll_s`` seconds). Keys: the queue ``<prefix>:queue`` (and its health-check
key) and, since every job id is ``<prefix>:<n>``, ``arq:job:<prefix>:<n>``,
``arq:result:...``, ``arq:in-progress:...`` and ``arq:retry:...``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, ClassVar

from _queue_caller import config, serve
from arq import create_pool, run_worker
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job

CONFIG = config()
PREFIX: str = CONFIG["prefix"]
REDIS = RedisSettings.from_dsn(CONFIG["url"])
QUEUE = f"{PREFIX}:queue"
POLL_S: float = CONFIG.get("poll_s", 0.5)
ENQUEUE_SLOTS = 50


async def noop(ctx: dict[str, Any], x: int) -> int:
    return x


async def _ready(ctx: dict[str, Any]) -> None:
    print("bench-worker-ready", flush=True)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop]
    redis_settings = REDIS
    queue_name = QUEUE
    max_jobs: int = CONFIG.get("max_jobs", 10)
    poll_delay: float = CONFIG.get("poll_delay", 0.5)
    on_startup = _ready


_pool: ArqRedis | None = None


async def _setup() -> None:
    global _pool
    _pool = await create_pool(REDIS, default_queue_name=QUEUE)


async def _enqueue(x: int, slots: asyncio.Semaphore | None = None) -> Job:
    assert _pool is not None
    if slots is None:
        job = await _pool.enqueue_job("noop", x, _job_id=f"{PREFIX}:{x}")
    else:
        async with slots:
            job = await _pool.enqueue_job("noop", x, _job_id=f"{PREFIX}:{x}")
    if job is None:
        raise RuntimeError(f"job {PREFIX}:{x} already exists")
    return job


async def _batch(ids: list[int]) -> list[int]:
    slots = asyncio.Semaphore(ENQUEUE_SLOTS)
    jobs = await asyncio.gather(*(_enqueue(x, slots) for x in ids))
    return [await job.result(poll_delay=POLL_S) for job in jobs]


async def _one(x: int) -> int:
    result: int = await (await _enqueue(x)).result(poll_delay=POLL_S)
    return result


async def _close() -> None:
    if _pool is not None:
        await _pool.aclose()


if __name__ == "__main__":
    if sys.argv[1:] == ["worker"]:
        logging.basicConfig(level=logging.WARNING)
        run_worker(WorkerSettings)  # type: ignore[arg-type]
        sys.exit(0)
    sys.exit(serve(_setup, _batch, _one, _close, dists=("arq", "redis")))
