"""What a caller sees of tasks run on a worker: OpenTelemetry spans nest across the broker,
and the worker's own lifecycle events."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from murmur import AgentContext, AgentRuntime, EventType, OpenTelemetryEmitter, TaskSpec
from murmur.distributed._transport import BrokerTransport
from murmur.distributed._worker import Worker
from support import Recorder

pytestmark = pytest.mark.anyio

URL = "memory://observability"


@pytest.fixture
def tracing() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


async def test_spans_made_on_the_worker_are_children_of_the_callers_task_span(
    tracing: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = tracing
    tracer = provider.get_tracer("worker-side")

    async def traced(text: str) -> str:
        # What pydantic-ai's instrumentation or httpx would do inside the agent.
        with tracer.start_as_current_span("inside the agent"):
            return text.upper()

    namespace = f"t-{uuid.uuid4().hex[:8]}"
    emitter = OpenTelemetryEmitter(provider, MeterProvider())
    async with (
        Worker(URL, [traced], namespace=namespace, heartbeat_seconds=0),
        AgentRuntime(
            transport=BrokerTransport(URL, namespace=namespace), event_emitter=emitter
        ) as runtime,
    ):
        result = await runtime.run(traced, TaskSpec(input="x"))
    assert result.output == "X"
    spans = {span.name: span for span in exporter.get_finished_spans()}
    task_span, inner = spans["invoke_agent traced"], spans["inside the agent"]
    assert inner.context.trace_id == task_span.context.trace_id
    assert inner.parent is not None
    assert inner.parent.span_id == task_span.context.span_id


async def test_worker_reports_started_heartbeat_and_stopped() -> None:
    recorder = Recorder()
    beats = anyio.Event()

    class Beats(Recorder):
        async def emit(self, event: object) -> None:
            await recorder.emit(event)  # type: ignore[arg-type]
            if getattr(event, "type", None) is EventType.WORKER_HEARTBEAT:
                beats.set()

    async def echo(text: str, ctx: AgentContext) -> str:
        return text

    worker = Worker(
        URL,
        [echo],
        namespace=f"t-{uuid.uuid4().hex[:8]}",
        event_emitter=Beats(),
        heartbeat_seconds=0.01,
        name="w-1",
    )
    async with worker:
        async with AgentRuntime(
            transport=BrokerTransport(URL, namespace=worker.namespace)
        ) as runtime:
            await runtime.run(echo, TaskSpec(input="x"))
        await beats.wait()
    kinds = recorder.types()
    assert kinds[0] is EventType.WORKER_STARTED
    assert kinds[-1] is EventType.WORKER_STOPPED
    started, stopped = recorder.events[0], recorder.events[-1]
    assert started.data == {"worker": "w-1", "agents": ["echo"], "concurrency": 20}
    assert stopped.data["processed"] == 1
    assert stopped.data["per_agent"] == {"echo": 1}
    beat = recorder.of(EventType.WORKER_HEARTBEAT)[0]
    assert {"worker", "processed", "failed", "in_flight", "rate"} <= beat.data.keys()
