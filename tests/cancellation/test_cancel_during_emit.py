"""A cancellation that arrives while a finished task's event is being emitted.

A task whose agent finished (and spent tokens) is cancelled by ``fail_fast`` while the
emitter is still taking its ``task.succeeded`` event (an emitter writing to a queue, a
socket). Its slot must not claim it never ran: what it spent belongs in the batch.
"""

from __future__ import annotations

import anyio
import pytest

from murmur import AgentContext, AgentRuntime, EventType, RuntimeEvent, TaskSpec

pytestmark = pytest.mark.anyio


async def test_a_task_cancelled_while_its_success_is_emitted_keeps_what_it_spent() -> None:
    emitting = anyio.Event()

    class SlowSink:
        """Blocks on the success event of task "a" (as a full queue would)."""

        async def emit(self, event: RuntimeEvent) -> None:
            if event.type is EventType.TASK_SUCCEEDED and event.task_id == "a":
                emitting.set()
                await anyio.sleep_forever()

    async def agent(name: str, ctx: AgentContext) -> str:
        if name == "a":
            ctx.report_usage(input_tokens=10, requests=1)
            return "done"
        await emitting.wait()
        raise RuntimeError("b broke")

    async with AgentRuntime(event_emitter=SlowSink()) as runtime:
        with anyio.fail_after(30):
            results = await runtime.gather(
                agent,
                [TaskSpec(input="a", task_id="a"), TaskSpec(input="b", task_id="b")],
                fail_fast=True,
            )
    first = results[0]
    # Today: TaskCancelledError("... failed first"), usage 0, attempts 0 — its agent had
    # returned "done" after one attempt and 10 input tokens, which the batch no longer shows.
    assert (first.usage.input_tokens, first.attempts) == (10, 1), first
