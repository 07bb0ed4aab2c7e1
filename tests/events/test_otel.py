"""OpenTelemetryEmitter: spans and GenAI metrics, checked with the SDK in-memory exporters."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from murmur import AgentContext, AgentRuntime, EventType, RuntimeEvent, TaskSpec, Usage
from murmur.events.otel import OpenTelemetryEmitter
from murmur.events.types import EventError

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0


@dataclass
class Otel:
    emitter: OpenTelemetryEmitter
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        (found,) = [s for s in self.spans() if s.name == name]
        return found

    def points(self, metric: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for m in scope.metrics
            if m.name == metric
            for point in m.data.data_points
        ]


@pytest.fixture
def otel() -> Iterator[Otel]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    emitter = OpenTelemetryEmitter(tracer_provider, meter_provider)
    yield Otel(emitter, exporter, reader, tracer_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def ev(
    type: EventType,
    task_id: str | None = "t1",
    at: float = 0.0,
    *,
    agent: str = "writer",
    trace_id: str = "trace-1",
    **fields: Any,
) -> RuntimeEvent:
    return RuntimeEvent(
        type=type, timestamp=T0 + at, trace_id=trace_id, task_id=task_id, agent=agent, **fields
    )


def ns(at: float) -> int:
    return int((T0 + at) * 1e9)


async def feed(emitter: OpenTelemetryEmitter, *events: RuntimeEvent) -> None:
    for event in events:
        await emitter.emit(event)


async def test_a_successful_task_is_one_span_with_genai_attributes_and_metrics(
    otel: Otel,
) -> None:
    usage = Usage(input_tokens=120, output_tokens=30, requests=2, tool_calls=1)
    await feed(
        otel.emitter,
        ev(EventType.TASK_STARTED, at=0.0, depth=0),
        ev(EventType.TASK_SUCCEEDED, at=1.5, duration=1.5, usage=usage, attempt=2),
    )
    span = otel.span("invoke_agent writer")
    assert span.kind is SpanKind.INTERNAL
    assert span.parent is None
    assert (span.start_time, span.end_time) == (ns(0.0), ns(1.5))
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "writer",
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30,
        "murmur.task_id": "t1",
        "murmur.trace_id": "trace-1",
        "murmur.depth": 0,
        "murmur.attempts": 2,
        "murmur.outcome": "succeeded",
        "murmur.usage.requests": 2,
        "murmur.usage.tool_calls": 1,
    }
    assert otel.emitter.open_spans == 0

    tokens = {
        p.attributes["gen_ai.token.type"]: p for p in otel.points("gen_ai.client.token.usage")
    }
    assert isinstance(tokens["input"], HistogramDataPoint)
    assert (tokens["input"].sum, tokens["output"].sum) == (120, 30)
    assert tokens["input"].attributes["gen_ai.agent.name"] == "writer"
    assert tokens["input"].attributes["gen_ai.operation.name"] == "invoke_agent"
    (duration,) = otel.points("gen_ai.client.operation.duration")
    assert duration.sum == 1.5
    assert duration.count == 1
    assert "error.type" not in duration.attributes
    (count,) = otel.points("murmur.tasks")
    assert count.value == 1
    assert dict(count.attributes) == {"gen_ai.agent.name": "writer", "murmur.outcome": "succeeded"}


async def test_a_failed_task_span_has_error_status_and_the_exception(otel: Otel) -> None:
    error = EventError(type="ValueError", message="bad input")
    await feed(
        otel.emitter,
        ev(EventType.TASK_STARTED, at=0.0),
        ev(EventType.TASK_FAILED, at=0.25, duration=0.25, error=error, attempt=1),
    )
    span = otel.span("invoke_agent writer")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "bad input"
    assert span.attributes is not None
    assert span.attributes["error.type"] == "ValueError"
    assert span.attributes["murmur.outcome"] == "failed"
    (exception,) = span.events
    assert exception.name == "exception"
    assert dict(exception.attributes or {}) == {
        "exception.type": "ValueError",
        "exception.message": "bad input",
    }
    (duration,) = otel.points("gen_ai.client.operation.duration")
    assert duration.attributes["error.type"] == "ValueError"
    assert otel.points("gen_ai.client.token.usage") == []  # no tokens used: nothing recorded
    (count,) = otel.points("murmur.tasks")
    assert count.attributes["murmur.outcome"] == "failed"


async def test_a_cancelled_task_is_ended_without_error_status(otel: Otel) -> None:
    await feed(
        otel.emitter,
        ev(EventType.TASK_STARTED),
        ev(EventType.TASK_CANCELLED, at=0.5, duration=0.5, usage=Usage(input_tokens=5)),
    )
    span = otel.span("invoke_agent writer")
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes is not None
    assert span.attributes["murmur.outcome"] == "cancelled"
    tokens = {
        p.attributes["gen_ai.token.type"]: p.sum for p in otel.points("gen_ai.client.token.usage")
    }
    assert tokens == {"input": 5, "output": 0}


async def test_policy_events_become_span_events(otel: Otel) -> None:
    retry_error = EventError(type="TimeoutError", message="slow")
    await feed(
        otel.emitter,
        ev(EventType.TASK_STARTED),
        ev(EventType.ATTEMPT_TIMED_OUT, at=1, attempt=1, data={"timeout_seconds": 1.0}),
        ev(
            EventType.RETRY_SCHEDULED,
            at=1.1,
            attempt=1,
            error=retry_error,
            data={"delay": 0.5, "next_attempt": 2, "ignored": {"not": "scalar"}},
        ),
        ev(EventType.BUDGET_EXCEEDED, at=2, attempt=2, data={"limit": 10, "used": 12}),
        ev(EventType.DEPTH_LIMIT_EXCEEDED, at=3, data={"max_depth": 2}),
        ev(EventType.TASK_FAILED, at=4, error=EventError(type="BudgetExceededError", message="x")),
    )
    span = otel.span("invoke_agent writer")
    by_name = {e.name: (e.timestamp, dict(e.attributes or {})) for e in span.events}
    assert by_name["task.attempt_timed_out"] == (
        ns(1),
        {"murmur.timeout_seconds": 1.0, "murmur.attempt": 1},
    )
    assert by_name["task.retry_scheduled"][1] == {
        "murmur.delay": 0.5,
        "murmur.next_attempt": 2,
        "murmur.attempt": 1,
        "error.type": "TimeoutError",
        "murmur.error.message": "slow",
    }
    assert by_name["budget.exceeded"][1] == {
        "murmur.limit": 10,
        "murmur.used": 12,
        "murmur.attempt": 2,
    }
    assert by_name["depth.limit_exceeded"][1] == {"murmur.max_depth": 2}
    assert [e.name for e in span.events][-1] == "exception"


async def test_a_spawned_child_is_a_child_span_in_the_same_trace(otel: Otel) -> None:
    await feed(
        otel.emitter,
        ev(EventType.TASK_STARTED, "parent", 0, agent="planner"),
        ev(EventType.CHILD_SPAWNED, "parent", 1, agent="planner", data={"child_agent": "writer"}),
        ev(EventType.TASK_STARTED, "child", 1, parent_task_id="parent", depth=1),
        ev(EventType.TASK_SUCCEEDED, "child", 2, parent_task_id="parent", depth=1),
        ev(EventType.TASK_SUCCEEDED, "parent", 3, agent="planner"),
    )
    parent = otel.span("invoke_agent planner")
    child = otel.span("invoke_agent writer")
    assert parent.parent is None
    assert child.parent is not None
    assert child.parent.span_id == parent.context.span_id
    assert child.context.trace_id == parent.context.trace_id
    assert child.attributes is not None
    assert child.attributes["murmur.parent_task_id"] == "parent"
    assert child.attributes["murmur.depth"] == 1
    assert [e.name for e in parent.events] == ["task.child_spawned"]


async def test_a_gather_is_one_trace_under_a_batch_span(otel: Otel) -> None:
    batch = {"size": 2, "max_concurrency": 2, "fail_fast": False}
    await feed(
        otel.emitter,
        ev(EventType.BATCH_STARTED, None, 0, data=batch),
        ev(EventType.TASK_STARTED, "a", 0.1),
        ev(EventType.TASK_STARTED, "b", 0.2),
        ev(EventType.TASK_SUCCEEDED, "b", 0.3),
        ev(EventType.TASK_FAILED, "a", 0.4, error=EventError(type="E", message="m")),
        ev(EventType.BATCH_COMPLETED, None, 0.5, data={"succeeded": 1, "failed": 1}, duration=0.5),
    )
    gather = otel.span("gather writer")
    tasks = [s for s in otel.spans() if s.name == "invoke_agent writer"]
    assert gather.parent is None
    assert len(tasks) == 2
    assert all(t.parent is not None and t.parent.span_id == gather.context.span_id for t in tasks)
    assert {t.context.trace_id for t in tasks} == {gather.context.trace_id}
    assert gather.attributes is not None
    assert gather.attributes["murmur.size"] == 2
    assert gather.attributes["murmur.failed"] == 1
    assert gather.status.status_code is StatusCode.UNSET  # partial failure is data
    assert (gather.start_time, gather.end_time) == (ns(0), ns(0.5))
    # A later run in the same trace (none open) is not attached to the finished batch.
    await feed(
        otel.emitter, ev(EventType.TASK_STARTED, "c", 1), ev(EventType.TASK_SUCCEEDED, "c", 2)
    )
    late = [s for s in otel.spans() if s.attributes and s.attributes.get("murmur.task_id") == "c"]
    assert late[0].parent is None


async def test_group_nodes_are_children_of_the_group_span(otel: Otel) -> None:
    await feed(
        otel.emitter,
        ev(EventType.GROUP_STARTED, None, 0, agent="research", data={"group": "research"}),
        ev(EventType.NODE_STARTED, None, 0.1, agent="researcher", data={"node": "researcher"}),
        ev(EventType.TASK_STARTED, "n1", 0.1, agent="researcher"),
        ev(EventType.TASK_SUCCEEDED, "n1", 0.2, agent="researcher"),
        ev(EventType.NODE_COMPLETED, None, 0.2, agent="researcher", data={"node": "researcher"}),
        ev(EventType.GROUP_COMPLETED, None, 0.3, agent="research"),
    )
    group = otel.span("group research")
    node = otel.span("invoke_agent researcher")
    assert node.parent is not None
    assert node.parent.span_id == group.context.span_id
    assert [e.name for e in group.events] == ["group.node_started", "group.node_completed"]
    assert dict(group.events[0].attributes or {}) == {
        "murmur.node": "researcher",
        "gen_ai.agent.name": "researcher",
    }


async def test_a_failed_group_has_error_status(otel: Otel) -> None:
    await feed(
        otel.emitter,
        ev(EventType.GROUP_STARTED, None, 0, agent="crew"),
        ev(
            EventType.GROUP_COMPLETED,
            None,
            1,
            agent="crew",
            error=EventError(type="E", message="m"),
        ),
    )
    assert otel.span("group crew").status.status_code is StatusCode.ERROR


async def test_top_level_spans_join_the_callers_current_span(otel: Otel) -> None:
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("http request") as request:
        await feed(otel.emitter, ev(EventType.TASK_STARTED), ev(EventType.TASK_SUCCEEDED, at=1))
    task = otel.span("invoke_agent writer")
    assert task.parent is not None
    assert task.parent.span_id == request.get_span_context().span_id
    assert task.context.trace_id == request.get_span_context().trace_id


async def test_spans_whose_end_never_comes_are_bounded(otel: Otel) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    emitter = OpenTelemetryEmitter(provider, max_open_spans=2)
    for i in range(5):
        await emitter.emit(ev(EventType.TASK_STARTED, f"t{i}", i))
    assert emitter.open_spans == 2
    assert emitter.evicted == 3
    evicted = exporter.get_finished_spans()
    assert [s.attributes["murmur.task_id"] for s in evicted if s.attributes] == ["t0", "t1", "t2"]
    assert all(s.attributes and s.attributes["murmur.span.incomplete"] is True for s in evicted)
    # The late end of an evicted task is harmless; the open ones still end normally.
    await emitter.emit(ev(EventType.TASK_SUCCEEDED, "t0", 9))
    await emitter.emit(ev(EventType.TASK_SUCCEEDED, "t4", 9))
    assert emitter.open_spans == 1
    assert len(exporter.get_finished_spans()) == 4
    provider.shutdown()


async def test_a_task_id_started_twice_ends_the_first_span(otel: Otel) -> None:
    await feed(
        otel.emitter, ev(EventType.TASK_STARTED, "dup", 0), ev(EventType.TASK_STARTED, "dup", 1)
    )
    assert otel.emitter.open_spans == 1
    (first,) = otel.spans()
    assert first.attributes is not None
    assert first.attributes["murmur.span.incomplete"] is True


async def test_it_asks_only_for_the_events_it_uses(otel: Otel) -> None:
    wanted = otel.emitter.event_types()
    assert EventType.TASK_STARTED in wanted
    assert EventType.BATCH_COMPLETED in wanted
    assert EventType.WORKER_HEARTBEAT not in wanted


async def test_with_a_real_runtime_spawns_and_gathers_nest(otel: Otel) -> None:
    async def writer(x: int, ctx: AgentContext) -> int:
        ctx.report_usage(input_tokens=10, output_tokens=4, requests=1)
        return x * 2

    async def planner(n: int, ctx: AgentContext) -> int:
        first = await ctx.run(writer, TaskSpec(input=n))
        rest = await ctx.gather(writer, [TaskSpec(input=i) for i in range(2)])
        return first.unwrap() + sum(r.unwrap() for r in rest)

    async with AgentRuntime(event_emitter=otel.emitter) as rt:
        result = await rt.run(planner, TaskSpec(input=5, task_id="root"))
    assert result.unwrap() == 12
    assert otel.emitter.open_spans == 0
    spans = otel.spans()
    root = otel.span("invoke_agent planner")
    gather = otel.span("gather writer")
    writers = [s for s in spans if s.name == "invoke_agent writer"]
    assert root.parent is None
    assert len({s.context.trace_id for s in spans}) == 1
    assert gather.parent is not None
    assert gather.parent.span_id == root.context.span_id
    parents = sorted(
        "root" if w.parent and w.parent.span_id == root.context.span_id else "gather"
        for w in writers
        if w.parent and w.parent.span_id in (root.context.span_id, gather.context.span_id)
    )
    assert parents == ["gather", "gather", "root"]
    tokens = {
        p.attributes["gen_ai.token.type"]: p for p in otel.points("gen_ai.client.token.usage")
    }
    assert (tokens["input"].sum, tokens["output"].sum, tokens["input"].count) == (30, 12, 3)
    outcomes = {p.attributes["gen_ai.agent.name"]: p.value for p in otel.points("murmur.tasks")}
    assert outcomes == {"planner": 1, "writer": 3}


def test_without_opentelemetry_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match=r"murmur-agents\[otel\]"):
        OpenTelemetryEmitter()


# --- the task's span is current while the task runs -----------------------------------


async def test_spans_made_inside_an_agent_nest_under_its_task_span(otel: Otel) -> None:
    tracer = otel.tracer_provider.get_tracer("app")
    inside: list[int] = []

    async def writer(x: int) -> int:
        from opentelemetry import trace

        inside.append(trace.get_current_span().get_span_context().span_id)
        with tracer.start_as_current_span("db query"):
            return x + 1

    async with AgentRuntime(event_emitter=otel.emitter) as rt:
        results = await rt.gather(writer, [TaskSpec(input=i) for i in range(3)])
        # Outside a task, nothing of Murmur's is current.
        from opentelemetry import trace

        assert not trace.get_current_span().get_span_context().is_valid
    assert [r.unwrap() for r in results] == [1, 2, 3]
    tasks = {s.context.span_id: s for s in otel.spans() if s.name == "invoke_agent writer"}
    queries = [s for s in otel.spans() if s.name == "db query"]
    assert sorted(inside) == sorted(tasks)
    assert len(queries) == 3
    assert {q.parent.span_id for q in queries if q.parent} == set(tasks)


async def test_pydantic_ai_instrumentation_nests_under_the_task_span(otel: Otel) -> None:
    # A real pydantic-ai agent with its own OpenTelemetry instrumentation; under Trio it
    # runs on the asyncio bridge, and the current span must cross over with it.
    from pydantic_ai import Agent as PydanticAgent
    from pydantic_ai.capabilities.instrumentation import Instrumentation
    from pydantic_ai.models.instrumented import InstrumentationSettings
    from pydantic_ai.models.test import TestModel

    settings = InstrumentationSettings(tracer_provider=otel.tracer_provider)
    agent = PydanticAgent(
        TestModel(custom_output_text="done"),
        name="instrumented",
        capabilities=[Instrumentation(settings)],
    )
    async with AgentRuntime(event_emitter=otel.emitter) as rt:
        result = await rt.run(agent, TaskSpec(input="hello"))
    assert result.unwrap() == "done"
    ours = [s for s in otel.spans() if _scope(s) == "murmur"]
    theirs = [s for s in otel.spans() if _scope(s) != "murmur"]
    (task,) = ours
    assert task.name == "invoke_agent instrumented"
    assert theirs, "pydantic-ai made no spans"
    # pydantic-ai's run span (same GenAI name, its own tracer) is a child of Murmur's task
    # span, and every span it made is in that trace.
    assert all(s.context.trace_id == task.context.trace_id for s in theirs)
    top = [s for s in theirs if s.parent is not None and s.parent.span_id == task.context.span_id]
    assert [s.name for s in top] == ["invoke_agent instrumented"], [
        (s.name, s.parent) for s in theirs
    ]


def _scope(span: ReadableSpan) -> str | None:
    scope = span.instrumentation_scope
    return None if scope is None else scope.name


async def test_fan_out_and_filters_pass_the_stage_on_and_bad_stages_are_refused(
    otel: Otel,
) -> None:
    from murmur.events import FilteredEmitter, MultiEventEmitter

    (stage,) = otel.emitter.pipeline_stages()
    wrapped = MultiEventEmitter([FilteredEmitter(otel.emitter), MultiEventEmitter([])])
    assert [type(s) for s in wrapped.pipeline_stages()] == [type(stage)]

    class BadStages:
        async def emit(self, event: RuntimeEvent) -> None:
            pass

        def pipeline_stages(self) -> list[object]:
            return ["not a stage"]

    with pytest.raises(TypeError, match=r"event_emitter\.pipeline_stages\(\)\[0\] must be"):
        AgentRuntime(event_emitter=BadStages())  # type: ignore[arg-type]


async def echo_int(x: int) -> int:
    return x


async def test_without_task_events_the_stage_passes_through(otel: Otel) -> None:
    from murmur.events import FilteredEmitter

    only_batches = FilteredEmitter(otel.emitter, types=[EventType.BATCH_STARTED])
    async with AgentRuntime(event_emitter=only_batches) as rt:
        results = await rt.gather(echo_int, [TaskSpec(input=1)])
    assert results[0].unwrap() == 1
    assert otel.emitter.open_spans == 1  # the batch span: its end was filtered out too


# --- batches and groups are told apart by their call ids --------------------------------


async def test_two_concurrent_batches_of_one_agent_under_one_parent_keep_their_tasks(
    otel: Otel,
) -> None:
    release = anyio.Event()

    async def writer(x: int) -> int:
        if x >= 10:  # the slow batch's tasks wait until the fast batch is over
            await release.wait()
        return x

    async def planner(n: int, ctx: AgentContext) -> int:
        async def slow() -> None:
            await ctx.gather(writer, [TaskSpec(input=10), TaskSpec(input=11)])

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            await anyio.lowlevel.checkpoint()
            await ctx.gather(writer, [TaskSpec(input=1)])  # fast: over while slow waits
            release.set()
        return n

    async with AgentRuntime(event_emitter=otel.emitter) as rt:
        assert (await rt.run(planner, TaskSpec(input=0))).unwrap() == 0
    assert otel.emitter.open_spans == 0
    batches = {
        s.attributes["murmur.size"]: s
        for s in otel.spans()
        if s.name == "gather writer" and s.attributes
    }
    assert set(batches) == {1, 2}
    children = {
        size: [
            s
            for s in otel.spans()
            if s.name == "invoke_agent writer"
            and s.parent is not None
            and s.parent.span_id == batch.context.span_id
        ]
        for size, batch in batches.items()
    }
    assert {size: len(tasks) for size, tasks in children.items()} == {1: 1, 2: 2}
    # Each batch span ended with its own batch: the fast one first.
    fast, slow = batches[1], batches[2]
    assert fast.end_time is not None
    assert slow.end_time is not None
    assert fast.end_time <= slow.end_time
    assert all(not (s.attributes or {}).get("murmur.span.incomplete") for s in otel.spans())


async def test_a_fanned_out_node_batch_is_a_child_of_its_group_span(otel: Otel) -> None:
    from pydantic import BaseModel

    from murmur import AgentGroup, Edge, FanOut

    class Items(BaseModel):
        items: FanOut[list[int]]

    async def split(n: int) -> Items:
        return Items(items=list(range(n)))

    async def worker(item: int) -> int:
        return item

    group = AgentGroup(name="g", topology={split: Edge(to=(worker,)), worker: Edge.terminal()})
    async with AgentRuntime(event_emitter=otel.emitter) as rt:
        assert (await rt.run_group(group, TaskSpec(input=3))).is_ok()
    group_span = otel.span("group g")
    batch = otel.span("gather worker")
    assert batch.parent is not None
    assert batch.parent.span_id == group_span.context.span_id
    workers = [s for s in otel.spans() if s.name == "invoke_agent worker"]
    assert len(workers) == 3
    assert all(w.parent and w.parent.span_id == batch.context.span_id for w in workers)
    split_span = otel.span("invoke_agent split")
    assert split_span.parent is not None
    assert split_span.parent.span_id == group_span.context.span_id
    assert len({s.context.trace_id for s in otel.spans()}) == 1
