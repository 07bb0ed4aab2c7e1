"""BufferedEmitter: a slow emitter never stalls a run, and nothing it is owed goes unseen."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from pydantic_ai import RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from structlog.testing import capture_logs

import murmur
from murmur import (
    AgentContext,
    AgentRuntime,
    BufferedEmitter,
    EventType,
    RuntimeEvent,
    TaskSpec,
)
from murmur.events import FilteredEmitter
from support import Recorder

pytestmark = pytest.mark.anyio

HANG_GUARD = 10  # seconds; a hang guard only, no timing is asserted


class Gate(Recorder):
    """A slow emitter: each ``emit`` waits until the gate opens, then records."""

    def __init__(self) -> None:
        super().__init__()
        self.open = anyio.Event()
        self.entered = anyio.Event()
        self.cancelled = 0

    async def emit(self, event: RuntimeEvent) -> None:
        self.entered.set()
        try:
            await self.open.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        await super().emit(event)


async def echo(x: Any) -> Any:
    return x


async def test_a_stuck_emitter_does_not_stall_the_run_and_gets_everything_in_order() -> None:
    gate = Gate()
    direct = Recorder()
    with anyio.fail_after(HANG_GUARD):
        async with BufferedEmitter(gate) as buffered:
            async with AgentRuntime(event_emitter=buffered) as rt:
                results = await rt.gather(echo, [TaskSpec(input=i) for i in range(10)])
            # The whole gather ran while the wrapped emitter was stuck on its first event.
            await gate.entered.wait()
            assert gate.events == []
            assert [r.output for r in results] == list(range(10))
            assert buffered.queued == 2 + 2 * 10 - 1  # one is in the stuck emit()
            gate.open.set()
        # Leaving the block delivered what was queued.
    async with AgentRuntime(event_emitter=direct) as rt:
        await rt.gather(echo, [TaskSpec(input=i) for i in range(10)])
    assert gate.types() == direct.types()
    assert (buffered.delivered, buffered.dropped, buffered.failures) == (22, 0, 0)
    assert buffered.queued == 0


async def test_a_full_queue_drops_and_counts_and_never_waits() -> None:
    gate = Gate()
    with anyio.fail_after(HANG_GUARD):
        async with BufferedEmitter(gate, max_buffer=3) as buffered:
            for n in range(3):
                await buffered.emit(RuntimeEvent(type=EventType.TASK_STARTED, task_id=str(n)))
            await gate.entered.wait()  # the first one is taken off the queue: room for one
            for n in range(3, 8):
                await buffered.emit(RuntimeEvent(type=EventType.TASK_STARTED, task_id=str(n)))
            gate.open.set()
    assert [e.task_id for e in gate.events] == ["0", "1", "2", "3"]
    assert (buffered.delivered, buffered.dropped) == (4, 4)


async def test_a_failing_emitter_is_isolated_counted_and_logged_once() -> None:
    class Flaky(Recorder):
        async def emit(self, event: RuntimeEvent) -> None:
            if event.type is EventType.TASK_STARTED:
                raise RuntimeError("cannot write")
            await super().emit(event)

    flaky = Flaky()
    buffered = BufferedEmitter(flaky)
    with capture_logs() as logs:
        async with buffered, AgentRuntime(event_emitter=buffered) as rt:
            results = await rt.gather(echo, [TaskSpec(input=i) for i in range(3)])
    assert all(r.is_ok() for r in results)
    assert flaky.types().count(EventType.TASK_SUCCEEDED) == 3
    assert buffered.failures == 3
    reports = [e for e in logs if "buffered event emitter failed" in e["event"]]
    assert len(reports) == 1
    assert reports[0]["emitter"] == "Flaky"


async def test_draining_is_bounded_by_drain_timeout_and_leaves_nothing_running() -> None:
    gate = Gate()  # never opened
    with anyio.fail_after(HANG_GUARD):
        async with BufferedEmitter(gate, drain_timeout=0) as buffered:
            for n in range(4):
                await buffered.emit(RuntimeEvent(type=EventType.TASK_STARTED, task_id=str(n)))
            await gate.entered.wait()
    # The stuck emit() was cancelled, not abandoned; the three still queued are dropped.
    assert gate.cancelled == 1
    assert (buffered.delivered, buffered.dropped) == (1, 3)


async def test_leaving_by_an_error_cancels_delivery_and_counts_what_was_queued() -> None:
    gate = Gate()
    buffered = BufferedEmitter(gate)

    async def fails_inside() -> None:
        async with buffered:
            for n in range(3):
                await buffered.emit(RuntimeEvent(type=EventType.TASK_STARTED, task_id=str(n)))
            await gate.entered.wait()
            raise KeyError("boom")

    with anyio.fail_after(HANG_GUARD), pytest.raises(KeyError, match="boom"):
        await fails_inside()  # the block's own error, as it was: not in an exception group
    assert gate.cancelled == 1
    assert (buffered.delivered, buffered.dropped) == (1, 2)


async def test_a_cancellation_from_outside_goes_through_and_stops_delivery() -> None:
    gate = Gate()
    with anyio.fail_after(HANG_GUARD), anyio.CancelScope() as scope:
        async with BufferedEmitter(gate) as buffered:
            await buffered.emit(RuntimeEvent(type=EventType.TASK_STARTED))
            await gate.entered.wait()
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught  # not swallowed on the way out
    assert gate.cancelled == 1
    assert gate.events == []


async def test_outside_its_block_emit_refuses_and_the_run_still_succeeds() -> None:
    buffered = BufferedEmitter(Recorder())
    with pytest.raises(RuntimeError, match=r"inside `async with BufferedEmitter"):
        await buffered.emit(RuntimeEvent(type=EventType.TASK_STARTED))
    with capture_logs() as logs:
        async with AgentRuntime(event_emitter=buffered) as rt:
            result = await rt.run(echo, TaskSpec(input=1))
    assert result.unwrap() == 1
    assert any("event emitter failed" in e["event"] for e in logs)
    async with buffered:
        pass
    with pytest.raises(RuntimeError, match="entered only once"):
        async with buffered:
            pass


async def test_it_passes_on_what_the_wrapped_emitter_wants_and_needs() -> None:
    inner = FilteredEmitter(Recorder(), types=[EventType.TASK_FAILED])
    buffered = BufferedEmitter(inner)
    assert buffered.event_types() == frozenset({EventType.TASK_FAILED})
    assert buffered.pipeline_stages() == []
    assert BufferedEmitter(Recorder()).event_types() is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_buffer": 0}, r"max_buffer must be an int >= 1, got 0"),
        ({"max_buffer": True}, r"max_buffer must be an int >= 1, got True"),
        ({"drain_timeout": -1}, r"drain_timeout must be a number of seconds >= 0"),
        ({"drain_timeout": float("inf")}, r"drain_timeout must be .* or None"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BufferedEmitter(Recorder(), **kwargs)


def test_an_object_without_emit_is_refused() -> None:
    with pytest.raises(TypeError, match="emitter must have `async def emit"):
        BufferedEmitter(object())  # type: ignore[arg-type]


async def test_events_an_agent_emits_from_the_asyncio_bridge_reach_emitters_at_home() -> None:
    """A pydantic-ai tool's ``ctx.emit`` runs on the bridge thread under Trio; emitters are
    still called on the runtime's own thread (BufferedEmitter's queue is not thread-safe)."""

    from pydantic_ai.messages import ModelResponse

    home = threading.get_ident()
    threads: list[int] = []

    class ThreadRecorder(Recorder):
        async def emit(self, event: RuntimeEvent) -> None:
            threads.append(threading.get_ident())
            await super().emit(event)

    async def note(ctx: RunContext[AgentContext]) -> str:
        await ctx.deps.emit(EventType.RETRY_SCHEDULED, data={"from": "tool"})
        return "noted"

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if messages[-1].parts[-1].part_kind == "tool-return":
            return ModelResponse(parts=[TextPart("done")])
        return ModelResponse(parts=[ToolCallPart("note", {})])

    agent = murmur.Agent(name="noting", model=FunctionModel(model), tools=(note,))
    sink = ThreadRecorder()
    buffered = BufferedEmitter(sink)
    with anyio.fail_after(HANG_GUARD):
        async with buffered, AgentRuntime(event_emitter=buffered) as rt:
            assert (await rt.run(agent, TaskSpec(input="go"))).unwrap() == "done"
    assert sink.types() == [
        EventType.TASK_STARTED,
        EventType.RETRY_SCHEDULED,
        EventType.TASK_SUCCEEDED,
    ]
    assert sink.events[1].data == {"from": "tool"}
    assert set(threads) == {home}
    assert (buffered.delivered, buffered.dropped, buffered.failures) == (3, 0, 0)
