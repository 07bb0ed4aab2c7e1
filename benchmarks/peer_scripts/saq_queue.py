"""saq on Redis, for the distributed scenario (runs in saq's own virtualenv).

Worker: ``python -m saq saq_queue.settings`` (saq's own CLI, one process, concurrency from
``BENCH_PEER``) with this file importable and ``BENCH_PEER`` set; saq's ``startup`` hook
prints ``bench-worker-ready``. Caller: ``python saq_queue.py`` (see ``_queue_caller``): a
batch is ``Queue.map`` — saq's own call to enqueue many jobs and collect their results; it
reads the jobs' states every 0.5 s, its default (10 ms and 50 ms were slower: each read
fetches every job still pending) — and a single task is ``Queue.enqueue`` then
``Job.refresh(until_complete=...)``, which waits for the job's pub/sub notification (the
polling ``Queue.apply`` takes 0.5 s or more). saq subscribes in a background task, so a
quick job's notification can come before the subscription and a wait without a bound then
never ends (seen here, a few times in 900 tasks): the wait is bounded to ``LISTEN_S`` and
the job read again.
Every key saq makes starts with ``saq:<queue name>`` or ``saq:job:<queue name>``, and the
queue name is the run's prefix.
"""

from __future__ import annotations

import sys
from typing import Any

from _queue_caller import config, serve
from saq import Queue
from saq.job import TERMINAL_STATUSES, Status

CONFIG = config()
queue = Queue.from_url(CONFIG["url"], name=CONFIG["prefix"])
#: How long a single task's wait listens before it reads the job again.
LISTEN_S = 0.05


async def noop(ctx: dict[str, Any], *, x: int) -> int:
    return x


async def _ready(ctx: dict[str, Any]) -> None:
    print("bench-worker-ready", flush=True)


#: What ``python -m saq saq_queue.settings`` runs.
settings = {
    "queue": queue,
    "functions": [noop],
    "concurrency": CONFIG.get("concurrency", 20),
    "startup": _ready,
}


async def _setup() -> None:
    await queue.connect()


async def _batch(ids: list[int]) -> list[int]:
    return await queue.map("noop", [{"x": i} for i in ids])


async def _one(x: int) -> int:
    job = await queue.enqueue("noop", x=x)
    assert job is not None
    while job.status not in TERMINAL_STATUSES:
        try:
            await job.refresh(until_complete=LISTEN_S)
        except TimeoutError:
            await job.refresh()
    if job.status != Status.COMPLETE:
        raise RuntimeError(f"job {job.key} ended {job.status}: {job.error}")
    result: int = job.result
    return result


async def _close() -> None:
    await queue.disconnect()


if __name__ == "__main__":
    sys.exit(serve(_setup, _batch, _one, _close, dists=("saq", "redis")))
