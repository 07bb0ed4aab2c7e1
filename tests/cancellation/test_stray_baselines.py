"""An emitter's stray cancellation in a shielded clean-up (a task being cancelled) is still
isolated as the emitter's failure, for a run's and a batch's events."""

from __future__ import annotations

import anyio
import pytest

from murmur import AgentRuntime, EventType, RuntimeEvent, TaskSpec
from support import in_shielded_cleanup, stray_cancellation

pytestmark = pytest.mark.anyio


class StrayOn:
    """An emitter whose shared flush was cancelled by someone else, for one event type."""

    def __init__(self, kind: EventType) -> None:
        self.kind = kind

    async def emit(self, event: RuntimeEvent) -> None:
        if event.type is self.kind:
            await stray_cancellation()


async def failing(text: str) -> str:
    await anyio.lowlevel.checkpoint()
    raise ValueError(text)


async def fine(text: str) -> str:
    await anyio.lowlevel.checkpoint()
    return text


async def test_an_emitter_stray_on_task_failed_in_a_shielded_cleanup_run_is_isolated() -> None:
    # TASK_FAILED goes through CallOrigin.emit_isolated, judged against the call's baseline.
    async with AgentRuntime(event_emitter=StrayOn(EventType.TASK_FAILED)) as runtime:
        result = await in_shielded_cleanup(lambda: runtime.run(failing, TaskSpec(input="x")))
    assert not isinstance(result, BaseException), f"run() raised {result!r}"
    assert isinstance(result.error, ValueError)  # type: ignore[attr-defined]


async def test_an_emitter_stray_on_batch_started_in_a_shielded_cleanup_gather_is_isolated() -> None:
    # BATCH_STARTED goes through _RuntimeCore.emit, which judges with baseline 0.
    async with AgentRuntime(event_emitter=StrayOn(EventType.BATCH_STARTED)) as runtime:
        results = await in_shielded_cleanup(
            lambda: runtime.gather(fine, [TaskSpec(input="a"), TaskSpec(input="b")])
        )
    assert not isinstance(results, BaseException), f"gather() raised {results!r}"
    assert [r.output for r in results] == ["a", "b"]  # type: ignore[attr-defined]
