"""A stray CancelledError raised by the event emitter is that emitter's failure.

An emitter that awaits a shared flush future someone else cancelled receives
``asyncio.CancelledError`` without its task being cancelled. The runtime promises an
emitter never fails a run; a stray cancellation is that emitter's failure, not a
cancellation of the batch.
"""

from __future__ import annotations

import anyio
import pytest

from murmur import AgentRuntime, EventType, RuntimeEvent, TaskSpec
from support import stray_cancellation

pytestmark = pytest.mark.anyio

HANG_GUARD = 30


class FlakyFlushEmitter:
    """Its shared flush was cancelled by someone else once, for one event type."""

    def __init__(self, kind: EventType, task_id: str) -> None:
        self.kind = kind
        self.task_id = task_id
        self.seen: list[RuntimeEvent] = []

    async def emit(self, event: RuntimeEvent) -> None:
        self.seen.append(event)
        if event.type is self.kind and event.task_id == self.task_id:
            await stray_cancellation()


@pytest.mark.parametrize(
    "kind", [EventType.TASK_STARTED, EventType.TASK_SUCCEEDED], ids=["started", "succeeded"]
)
async def test_a_stray_cancellation_from_the_emitter_does_not_sink_the_batch(
    kind: EventType,
) -> None:
    async def agent(n: int) -> int:
        await anyio.lowlevel.checkpoint()
        return n

    emitter = FlakyFlushEmitter(kind, "t3")
    async with AgentRuntime(event_emitter=emitter) as runtime:
        with anyio.fail_after(HANG_GUARD):
            results = await runtime.gather(
                agent, [TaskSpec(input=n, task_id=f"t{n}") for n in range(8)]
            )
    # The emitter's failure is isolated: every task ran and kept its output.
    assert [r.output for r in results] == list(range(8))


async def test_a_stray_cancellation_from_the_emitter_does_not_fail_a_single_run() -> None:
    async def agent(n: int) -> int:
        return n

    emitter = FlakyFlushEmitter(EventType.TASK_SUCCEEDED, "only")
    async with AgentRuntime(event_emitter=emitter) as runtime:
        result = await runtime.run(agent, TaskSpec(input=7, task_id="only"))
    assert result.output == 7
