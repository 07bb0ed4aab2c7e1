"""What the runtime emits, when, and that emitters can never break a run."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from murmur import (
    AgentContext,
    AgentRuntime,
    BudgetExceededError,
    EventType,
    RuntimeEvent,
    RuntimeOptions,
    TaskSpec,
    TokenBudget,
)
from murmur.events import FilteredEmitter, MultiEventEmitter, by_agent, by_type
from support import Recorder

pytestmark = pytest.mark.anyio


class Exploding:
    def __init__(self) -> None:
        self.calls = 0

    async def emit(self, event: RuntimeEvent) -> None:
        self.calls += 1
        raise RuntimeError("emitter is broken")


async def echo(x: Any) -> Any:
    return x


async def fails(x: Any) -> Any:
    raise ValueError(f"bad {x}")


async def test_gather_emits_batch_and_task_lifecycle_before_returning() -> None:
    rec = Recorder()
    async with AgentRuntime(event_emitter=rec) as rt:
        results = await rt.gather(echo, [TaskSpec(input=i) for i in range(3)])
        # Everything was handed over by the time gather returned.
        seen = list(rec.types())
    assert [r.output for r in results] == [0, 1, 2]
    assert seen[0] is EventType.BATCH_STARTED
    assert seen[-1] is EventType.BATCH_COMPLETED
    assert seen.count(EventType.TASK_STARTED) == 3
    assert seen.count(EventType.TASK_SUCCEEDED) == 3
    by_task: dict[str | None, list[EventType]] = {}
    for event in rec.events:
        if event.task_id is not None:
            by_task.setdefault(event.task_id, []).append(event.type)
    assert all(v == [EventType.TASK_STARTED, EventType.TASK_SUCCEEDED] for v in by_task.values())
    assert len({e.trace_id for e in rec.events}) == 1
    completed = rec.events[-1]
    assert completed.data == {"size": 3, "succeeded": 3, "failed": 0}
    assert completed.duration is not None
    assert completed.duration >= 0


async def test_every_duration_an_event_carries_lies_within_its_call() -> None:
    from time import perf_counter

    from murmur import AgentGroup, Edge

    async def first(x: Any) -> Any:
        return x

    async def second(x: Any) -> Any:
        return x

    group = AgentGroup(name="pair", topology={first: Edge(to=(second,)), second: Edge.terminal()})
    rec = Recorder()
    async with AgentRuntime(event_emitter=rec) as rt:
        before = perf_counter()
        await rt.gather(echo, [TaskSpec(input=i) for i in range(3)])
        await rt.run(fails, TaskSpec(input=1))
        await rt.run_group(group, TaskSpec(input=1))
        elapsed = perf_counter() - before
    timed = [e for e in rec.events if e.duration is not None]
    assert {e.type for e in timed} >= {
        EventType.BATCH_COMPLETED,
        EventType.TASK_SUCCEEDED,
        EventType.TASK_FAILED,
        EventType.NODE_COMPLETED,
        EventType.GROUP_COMPLETED,
    }
    for event in timed:
        assert event.duration is not None
        assert 0 <= event.duration <= elapsed, event


async def test_failure_event_carries_error_duration_and_attempt() -> None:
    rec = Recorder()
    async with AgentRuntime(event_emitter=rec) as rt:
        result = await rt.run(fails, TaskSpec(input=7, task_id="t-7"))
    assert not result.is_ok()
    failed = [e for e in rec.events if e.type is EventType.TASK_FAILED]
    assert len(failed) == 1
    event = failed[0]
    assert event.task_id == "t-7"
    assert event.agent == "fails"
    assert event.attempt == 1
    assert event.error is not None
    assert event.error.type == "ValueError"
    assert event.error.message == "bad 7"
    assert event.duration is not None


async def test_spawned_children_share_trace_and_point_at_parent() -> None:
    rec = Recorder()

    async def parent(x: int, ctx: AgentContext) -> int:
        child = await ctx.run(echo, TaskSpec(input=x + 1))
        return int(child.unwrap())

    async with AgentRuntime(event_emitter=rec) as rt:
        result = await rt.run(parent, TaskSpec(input=1, task_id="p"))
    assert result.output == 2
    spawned = [e for e in rec.events if e.type is EventType.CHILD_SPAWNED]
    assert len(spawned) == 1
    assert spawned[0].task_id == "p"
    assert spawned[0].data["child_agent"] == "echo"
    child_events = [e for e in rec.events if e.agent == "echo"]
    assert child_events
    assert all(e.parent_task_id == "p" and e.depth == 1 for e in child_events)
    assert len({e.trace_id for e in rec.events}) == 1


async def test_a_spawn_refused_for_bad_input_is_not_reported_as_a_spawn() -> None:
    rec = Recorder()
    refusals: list[str] = []

    async def parent(x: int, ctx: AgentContext) -> int:
        for attempt in (
            lambda: ctx.run(echo, x),  # type: ignore[arg-type]
            lambda: ctx.gather(echo, [TaskSpec(input=x), x]),  # type: ignore[list-item]
            lambda: ctx.gather(echo, [TaskSpec(input=x)], max_concurrency=0),
        ):
            try:
                await attempt()
            except (TypeError, ValueError) as exc:
                refusals.append("TypeError" if isinstance(exc, TypeError) else "ValueError")
        await ctx.gather(echo, [TaskSpec(input=x), TaskSpec(input=x)])
        return x

    async with AgentRuntime(event_emitter=rec) as rt:
        assert (await rt.run(parent, TaskSpec(input=1))).unwrap() == 1
    assert refusals == ["TypeError", "TypeError", "ValueError"]
    (spawned,) = rec.of(EventType.CHILD_SPAWNED)  # only the valid gather
    assert spawned.data == {"child_agent": "echo", "tasks": 2}


async def test_budget_exceeded_event_precedes_the_error_result() -> None:
    rec = Recorder()

    async def spender(x: int, ctx: AgentContext) -> int:
        ctx.report_usage(input_tokens=8, output_tokens=2)
        return x

    options = RuntimeOptions(token_budget=TokenBudget(limit=10))
    async with AgentRuntime(options=options, event_emitter=rec) as rt:
        first = await rt.run(spender, TaskSpec(input=1))
        second = await rt.run(spender, TaskSpec(input=2, task_id="late"))
    assert first.is_ok()
    assert isinstance(second.error, BudgetExceededError)
    late = [e.type for e in rec.events if e.task_id == "late"]
    assert late.index(EventType.BUDGET_EXCEEDED) < late.index(EventType.TASK_FAILED)


async def test_fail_fast_cancellation_is_reported_as_cancelled() -> None:
    rec = Recorder()
    started = anyio.Event()

    async def blocker(x: int) -> int:
        if x == 0:
            await started.wait()
            raise ValueError("first failure")
        started.set()
        await anyio.Event().wait()  # never set: only cancellation ends it
        return x

    async with AgentRuntime(event_emitter=rec) as rt:
        results = await rt.gather(
            blocker, [TaskSpec(input=i) for i in range(2)], max_concurrency=2, fail_fast=True
        )
    assert isinstance(results[0].error, ValueError)
    assert results[1].error is not None
    assert EventType.TASK_CANCELLED in rec.types()


async def test_a_raising_emitter_never_breaks_a_run_and_is_reported_once() -> None:
    broken = Exploding()
    with capture_logs() as logs:
        async with AgentRuntime(event_emitter=broken) as rt:
            results = await rt.gather(echo, [TaskSpec(input=i) for i in range(5)])
    assert [r.output for r in results] == list(range(5))
    assert broken.calls > 1
    reports = [entry for entry in logs if "event emitter failed" in entry["event"]]
    assert len(reports) == 1
    assert reports[0]["emitter"] == "Exploding"


async def test_multi_emitter_isolates_a_failing_child() -> None:
    first, second = Recorder(), Recorder()
    broken = Exploding()
    multi = MultiEventEmitter([first, broken, second])
    with capture_logs() as logs:
        async with AgentRuntime(event_emitter=multi) as rt:
            await rt.gather(echo, [TaskSpec(input=i) for i in range(2)])
    assert first.types() == second.types()
    assert len(first.events) == 2 + 2 * 2
    assert broken.calls == len(first.events)
    assert len([e for e in logs if "event emitter failed" in e["event"]]) == 1


async def test_filters_pass_only_matching_events_and_limit_what_is_built() -> None:
    rec = Recorder()
    only_failures = FilteredEmitter(rec, by_agent("fails"), types=[EventType.TASK_FAILED])
    assert only_failures.event_types() == frozenset({EventType.TASK_FAILED})
    multi = MultiEventEmitter([only_failures])
    assert multi.event_types() == frozenset({EventType.TASK_FAILED})
    async with AgentRuntime(event_emitter=multi) as rt:
        await rt.run(echo, TaskSpec(input=1))
        await rt.run(fails, TaskSpec(input=2))
    assert rec.types() == [EventType.TASK_FAILED]
    assert rec.events[0].agent == "fails"


class Wanting(Recorder):
    """A recorder that declares what it wants (changeable between calls)."""

    def __init__(self, *types: EventType) -> None:
        super().__init__()
        self.wanted = frozenset(types)

    def event_types(self) -> frozenset[EventType]:
        return self.wanted


async def test_multi_emitter_hands_each_child_only_what_it_declares() -> None:
    failures = Wanting(EventType.TASK_FAILED)
    everything = Recorder()
    multi = MultiEventEmitter([failures, everything])
    async with AgentRuntime(event_emitter=multi) as rt:
        await rt.gather(echo, [TaskSpec(input=i) for i in range(3)])
        await rt.run(fails, TaskSpec(input=1))
    # The child that declared its types never saw the others...
    assert failures.types() == [EventType.TASK_FAILED]
    # ...while the one that declared nothing saw every event, in order.
    assert everything.types().count(EventType.TASK_STARTED) == 4
    assert everything.types()[-1] is EventType.TASK_FAILED


async def test_multi_emitter_follows_a_child_whose_wishes_change_from_the_next_call() -> None:
    child = Wanting(EventType.BATCH_STARTED)
    multi = MultiEventEmitter([child])
    async with AgentRuntime(event_emitter=multi) as rt:
        await rt.gather(echo, [TaskSpec(input=1)])
        assert child.types() == [EventType.BATCH_STARTED]
        child.wanted = frozenset({EventType.TASK_SUCCEEDED})
        await rt.gather(echo, [TaskSpec(input=2)])
    assert child.types() == [EventType.BATCH_STARTED, EventType.TASK_SUCCEEDED]
    assert child.events[-1].task_id is not None


async def test_multi_emitter_used_directly_routes_by_what_children_declared() -> None:
    failures = Wanting(EventType.TASK_FAILED)
    multi = MultiEventEmitter([failures])
    await multi.emit(RuntimeEvent(type=EventType.TASK_STARTED))
    await multi.emit(RuntimeEvent(type=EventType.TASK_FAILED))
    assert failures.types() == [EventType.TASK_FAILED]


async def test_predicate_helpers() -> None:
    rec = Recorder()
    emitter = FilteredEmitter(rec, by_type(EventType.TASK_SUCCEEDED, "task.failed"))
    async with AgentRuntime(event_emitter=emitter) as rt:
        await rt.gather(echo, [TaskSpec(input=1)])
        await rt.run(fails, TaskSpec(input=1))
    assert rec.types() == [EventType.TASK_SUCCEEDED, EventType.TASK_FAILED]


def test_runtime_event_round_trips_through_json() -> None:
    event = RuntimeEvent(
        type=EventType.TASK_FAILED,
        trace_id="t",
        task_id="x",
        agent="a",
        depth=2,
        attempt=3,
        duration=0.5,
        error={"type": "ValueError", "message": "m"},  # type: ignore[arg-type]
        data={"k": [1, 2]},
    )
    again = RuntimeEvent.model_validate_json(event.model_dump_json())
    assert again == event
    assert again.type is EventType.TASK_FAILED


def test_event_emitter_without_emit_is_rejected() -> None:
    with pytest.raises(TypeError, match="event_emitter must have"):
        AgentRuntime(event_emitter=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"emitters\[1\]"):
        MultiEventEmitter([Recorder(), object()])  # type: ignore[list-item]


async def test_multi_emitter_ignores_types_it_does_not_know() -> None:
    class Custom(Recorder):
        def event_types(self) -> frozenset[Any]:
            return frozenset({"task.failed", "my.custom.type"})

    custom = Custom()
    multi = MultiEventEmitter([custom])  # no KeyError for the unknown name
    async with AgentRuntime(event_emitter=multi) as rt:
        await rt.run(fails, TaskSpec(input=1))
        await rt.run(echo, TaskSpec(input=1))
    assert custom.types() == [EventType.TASK_FAILED]
