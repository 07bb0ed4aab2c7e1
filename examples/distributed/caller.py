"""The caller: the same gather as in-process, sent through a broker to the workers.

    cd examples/distributed
    murmur worker start --app research --broker redis://127.0.0.1:6379     # one or more
    python caller.py [--backend trio]                                       # in another shell

``MURMUR_BROKER`` overrides the broker URL; ``MURMUR_NAMESPACE`` (callers and workers alike)
keeps this app's streams apart from others on the same broker.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import anyio
from research import researcher, shout

from murmur import AgentRuntime, EventType, RuntimeEvent, RuntimeOptions, TaskSpec

BROKER = os.environ.get("MURMUR_BROKER", "redis://127.0.0.1:6379")


class WorkerCounter:
    """An emitter: which worker ran each task (events come back from the workers)."""

    def __init__(self) -> None:
        self.by_worker: Counter[str] = Counter()

    async def emit(self, event: RuntimeEvent) -> None:
        if event.type is EventType.TASK_SUCCEEDED:
            self.by_worker[str(event.data.get("worker", "?"))] += 1


async def main() -> None:
    counter = WorkerCounter()
    async with AgentRuntime(
        broker=BROKER,
        options=RuntimeOptions(timeout_seconds=30, retry_max_attempts=3),
        event_emitter=counter,
    ) as runtime:
        questions = [f"question {i}" for i in range(10)]
        results = await runtime.gather(researcher, [TaskSpec(input=q) for q in questions])
        loud = await runtime.run(shout, TaskSpec(input="done"))
    for result in results[:3]:
        print(result.task_id[:8], result.output)
    print(f"{sum(r.is_ok() for r in results)} of {len(results)} ok;", loud.output)
    print(
        "tasks per worker:",
        len(counter.by_worker),
        "worker(s),",
        sum(counter.by_worker.values()),
        "tasks",
    )


if __name__ == "__main__":
    backend = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "asyncio"
    anyio.run(main, backend=backend)
