"""OpenTelemetryEmitter: runtime events as OpenTelemetry spans and GenAI metrics.

Needs the ``otel`` extra (``pip install 'murmur-agents[otel]'``); OpenTelemetry is imported
when the emitter is made, so importing this module costs nothing without it.

Spans (kind INTERNAL, timed by the events' own timestamps):

* ``invoke_agent {agent}``, one per task, from ``TASK_STARTED`` to ``TASK_SUCCEEDED`` /
  ``TASK_FAILED`` (status ERROR, an ``exception`` event) / ``TASK_CANCELLED`` (status
  unset, ``murmur.outcome = "cancelled"``). Retries, attempt timeouts, budget and depth
  refusals and spawns are span events on it.
* ``gather {agent}``, one per ``gather`` (``BATCH_STARTED`` to ``BATCH_COMPLETED``): the
  parent of that batch's task spans, so a top-level ``gather`` is one trace.
* ``group {name}``, one per group run (``GROUP_STARTED`` to ``GROUP_COMPLETED``): the parent
  of its nodes' task spans, with ``NODE_STARTED`` / ``NODE_COMPLETED`` as span events.

A span's parent is its batch or group span, else the span of its ``parent_task_id`` (a
spawn), else whatever span is current where the call was made (a web request, say), else
none: it starts a trace.

While a task runs, its span is the current span (the emitter asks the runtime for one
outermost pipeline stage that attaches it), so spans made inside the agent — pydantic-ai's
own instrumentation, httpx, your code — nest under the task's span, on the asyncio bridge
under Trio too. Spans whose end never comes are bounded: past ``max_open_spans``
the oldest is ended early, marked ``murmur.span.incomplete``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final

from .._version import __version__
from ..errors import InvalidValueError, MissingDependencyError
from .types import EventType, RuntimeEvent

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider
    from opentelemetry.util.types import AttributeValue

    from .._context import AgentContext
    from .._pipeline import CallNext

__all__ = ["OpenTelemetryEmitter"]

_OPERATION: Final = "invoke_agent"
# The GenAI semantic conventions' advised bucket boundaries.
_TOKEN_BUCKETS: Final = [4.0**i for i in range(14)]
_DURATION_BUCKETS: Final = [0.01 * 2**i for i in range(14)]

_TASK_ENDS: Final = {
    EventType.TASK_SUCCEEDED: "succeeded",
    EventType.TASK_FAILED: "failed",
    EventType.TASK_CANCELLED: "cancelled",
}
_TASK_NOTES: Final = frozenset(
    {
        EventType.RETRY_SCHEDULED,
        EventType.ATTEMPT_TIMED_OUT,
        EventType.BUDGET_EXCEEDED,
        EventType.RATE_LIMIT_WAITED,
        EventType.DEPTH_LIMIT_EXCEEDED,
        EventType.CHILD_SPAWNED,
    }
)
_GROUP_NOTES: Final = frozenset({EventType.NODE_STARTED, EventType.NODE_COMPLETED})
_WANTED: Final = frozenset(
    {
        EventType.TASK_STARTED,
        *_TASK_ENDS,
        *_TASK_NOTES,
        EventType.BATCH_STARTED,
        EventType.BATCH_COMPLETED,
        EventType.GROUP_STARTED,
        EventType.GROUP_COMPLETED,
        *_GROUP_NOTES,
    }
)

#: Open spans are keyed ("task", trace_id, task_id) or ("batch" | "group", serial number).
_Key = tuple[Any, ...]
#: Batches and groups are found by their call: ("batch" | "group", call_id), which their
#: tasks' events carry as ``call_id`` (a batch's tasks) or ``parent_call_id`` (a group's
#: nodes). Events without call ids (made by hand, or by an older producer) fall back to
#: ("batch", trace_id, parent_task_id, agent) and ("group", trace_id, parent_task_id),
#: which cannot tell apart two concurrent batches of one agent under one parent.
_Slot = tuple[str | None, ...]


class _Open:
    __slots__ = ("slot", "span")

    def __init__(self, span: Span, slot: _Slot | None) -> None:
        self.span = span
        self.slot = slot


def _batch_slot(event: RuntimeEvent) -> _Slot:
    """A batch event's batch, or a task event's (if the task is part of one)."""
    if event.call_id is not None:
        return ("batch", event.call_id)
    return ("batch", event.trace_id, event.parent_task_id, event.agent)


def _group_slot(event: RuntimeEvent) -> _Slot:
    """A group or node event's group."""
    if event.call_id is not None:
        return ("group", event.call_id)
    return ("group", event.trace_id, event.parent_task_id)


def _enclosing_group(event: RuntimeEvent) -> _Slot | None:
    """The group a task or batch runs for, as one of its nodes (``None``: none)."""
    if event.call_id is not None:
        return None if event.parent_call_id is None else ("group", event.parent_call_id)
    return ("group", event.trace_id, event.parent_task_id)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _data_attributes(data: dict[str, Any]) -> dict[str, AttributeValue]:
    """An event's scalar ``data`` as ``murmur.*`` attributes (others are left out)."""
    return {
        f"murmur.{key}": value
        for key, value in data.items()
        if isinstance(value, (str, bool, int, float))
    }


class _CurrentTaskSpan:
    """A pipeline stage: the task's span (opened at ``task.started``) is current inside it."""

    __slots__ = ("_context", "_emitter", "_trace")

    def __init__(self, emitter: OpenTelemetryEmitter) -> None:
        from opentelemetry import context

        self._emitter = emitter
        self._context = context
        self._trace = emitter._trace

    async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
        span = self._emitter._task_span(ctx.trace_id, ctx.task.task_id)
        if span is None:  # task events filtered out before they reached the emitter
            return await call_next(ctx)
        token = self._context.attach(self._trace.set_span_in_context(span))
        try:
            return await call_next(ctx)
        finally:
            self._context.detach(token)


class OpenTelemetryEmitter:
    """Turns runtime events into OpenTelemetry spans and metrics (GenAI conventions).

    Metrics: ``gen_ai.client.token.usage`` (histogram, ``{token}``, by ``gen_ai.token.type``
    ``input`` / ``output``), ``gen_ai.client.operation.duration`` (histogram, seconds) and
    ``murmur.tasks`` (counter, by ``murmur.outcome``), all with ``gen_ai.agent.name``.

    Args:
        tracer_provider: Where spans go; default the global tracer provider.
        meter_provider: Where metrics go; default the global meter provider.
        max_open_spans: Bound on spans waiting for their end event; past it the oldest is
            ended early (``murmur.span.incomplete``) so lost ends cannot leak memory.

    Raises:
        ImportError: OpenTelemetry is not installed (the ``otel`` extra).
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        *,
        max_open_spans: int = 10_000,
    ) -> None:
        try:
            # propagate: broker transports send the current context with each task.
            from opentelemetry import metrics, propagate, trace  # noqa: F401
        except ImportError as error:
            raise MissingDependencyError(
                "OpenTelemetryEmitter needs OpenTelemetry: pip install 'murmur-agents[otel]'"
            ) from error
        if max_open_spans < 1:
            raise InvalidValueError("max_open_spans must be >= 1")
        self.max_open_spans = max_open_spans
        #: Spans ended early: past ``max_open_spans``, or displaced by a task id seen again.
        self.evicted = 0
        self._trace = trace
        self._tracer = trace.get_tracer("murmur", __version__, tracer_provider)
        meter = metrics.get_meter("murmur", __version__, meter_provider)
        self._token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens used by agent tasks.",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="Duration of agent tasks, all attempts included.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._tasks = meter.create_counter(
            "murmur.tasks", unit="{task}", description="Agent tasks finished, by outcome."
        )
        self._lock = threading.Lock()
        self._open: OrderedDict[_Key, _Open] = OrderedDict()
        self._slots: dict[_Slot, list[_Key]] = {}
        self._serial = 0

    @property
    def open_spans(self) -> int:
        """Spans started and not yet ended."""
        return len(self._open)

    def event_types(self) -> frozenset[EventType]:
        """The events it uses; the runtime does not build the others for it."""
        return _WANTED

    def pipeline_stages(self) -> list[Any]:
        """One stage making each task's span current while the task runs."""
        return [_CurrentTaskSpan(self)]

    def _task_span(self, trace_id: str, task_id: str) -> Span | None:
        with self._lock:
            return self._span(("task", trace_id, task_id))

    async def emit(self, event: RuntimeEvent) -> None:
        kind = event.type
        if kind is EventType.TASK_STARTED:
            self._task_started(event)
        elif kind in _TASK_ENDS:
            self._task_ended(event, _TASK_ENDS[kind])
        elif kind in _TASK_NOTES:
            self._note(("task", event.trace_id, event.task_id), event)
        elif kind is EventType.BATCH_STARTED:
            self._container_started(_batch_slot(event), f"gather {event.agent}", event)
        elif kind is EventType.BATCH_COMPLETED:
            self._container_ended(_batch_slot(event), event)
        elif kind is EventType.GROUP_STARTED:
            name = event.data.get("group") or event.agent
            self._container_started(_group_slot(event), f"group {name}", event)
        elif kind is EventType.GROUP_COMPLETED:
            self._container_ended(_group_slot(event), event)
        elif kind in _GROUP_NOTES:
            with self._lock:
                keys = self._slots.get(_group_slot(event))
                key = keys[-1] if keys else None
            if key is not None:
                self._note(key, event)

    # --- tasks --------------------------------------------------------------------------

    def _task_started(self, event: RuntimeEvent) -> None:
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": _OPERATION,
            "murmur.depth": event.depth,
        }
        if event.agent is not None:
            attributes["gen_ai.agent.name"] = event.agent
        for name, value in (
            ("murmur.task_id", event.task_id),
            ("murmur.trace_id", event.trace_id),
            ("murmur.parent_task_id", event.parent_task_id),
        ):
            if value is not None:
                attributes[name] = value
        trace_id, parent_id = event.trace_id, event.parent_task_id
        with self._lock:
            group = _enclosing_group(event)
            parent = (
                self._latest(_batch_slot(event))
                or (None if group is None else self._latest(group))
                or self._span(("task", trace_id, parent_id) if parent_id is not None else None)
            )
        name = _OPERATION if event.agent is None else f"{_OPERATION} {event.agent}"
        span = self._start(name, parent, attributes, event.timestamp)
        self._add(("task", trace_id, event.task_id), _Open(span, None))

    def _task_ended(self, event: RuntimeEvent, outcome: str) -> None:
        agent = event.agent or ""
        error = event.error
        usage = event.usage
        outcome_attributes: dict[str, AttributeValue] = {
            "gen_ai.agent.name": agent,
            "murmur.outcome": outcome,
        }
        self._tasks.add(1, outcome_attributes)
        duration_attributes = {"gen_ai.operation.name": _OPERATION, **outcome_attributes}
        if error is not None:
            duration_attributes["error.type"] = error.type
        if event.duration is not None:
            self._duration.record(event.duration, duration_attributes)
        if usage is not None and usage.total_tokens:
            base = {"gen_ai.operation.name": _OPERATION, "gen_ai.agent.name": agent}
            self._token_usage.record(usage.input_tokens, {**base, "gen_ai.token.type": "input"})
            self._token_usage.record(usage.output_tokens, {**base, "gen_ai.token.type": "output"})

        with self._lock:
            entry = self._open.pop(("task", event.trace_id, event.task_id), None)
        if entry is None:
            return
        span = entry.span
        # One call: the SDK takes its span lock once per call.
        attributes: dict[str, AttributeValue] = {"murmur.outcome": outcome}
        if event.attempt is not None:
            attributes["murmur.attempts"] = event.attempt
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.input_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
            attributes["murmur.usage.requests"] = usage.requests
            attributes["murmur.usage.tool_calls"] = usage.tool_calls
        if error is not None:
            attributes["error.type"] = error.type
        span.set_attributes(attributes)
        end = _ns(event.timestamp)
        if error is not None:
            span.add_event(
                "exception",
                {"exception.type": error.type, "exception.message": error.message},
                timestamp=end,
            )
            if outcome == "failed":
                trace = self._trace
                span.set_status(trace.Status(trace.StatusCode.ERROR, error.message))
        span.end(end_time=end)

    def _note(self, key: _Key, event: RuntimeEvent) -> None:
        """Record ``event`` as a span event on the open span ``key``, if there is one."""
        with self._lock:
            span = self._span(key)
        if span is None:
            return
        attributes = _data_attributes(event.data)
        if event.attempt is not None:
            attributes["murmur.attempt"] = event.attempt
        if event.agent is not None and key[0] != "task":
            attributes["gen_ai.agent.name"] = event.agent
        if event.error is not None:
            attributes["error.type"] = event.error.type
            attributes["murmur.error.message"] = event.error.message
        span.add_event(event.type.value, attributes, timestamp=_ns(event.timestamp))

    # --- batches and groups -------------------------------------------------------------

    def _container_started(self, slot: _Slot, name: str, event: RuntimeEvent) -> None:
        attributes = _data_attributes(event.data)
        attributes["murmur.depth"] = event.depth
        if event.agent is not None:
            attributes["gen_ai.agent.name"] = event.agent
        if event.trace_id is not None:
            attributes["murmur.trace_id"] = event.trace_id
        if event.parent_task_id is not None:
            attributes["murmur.parent_task_id"] = event.parent_task_id
        parent_id = event.parent_task_id
        group = _enclosing_group(event) if slot[0] == "batch" else None
        with self._lock:
            # A node's batch belongs to its group; otherwise to the task that spawned it.
            parent = (None if group is None else self._latest(group)) or (
                self._span(("task", event.trace_id, parent_id)) if parent_id else None
            )
            self._serial += 1
            key = (slot[0], self._serial)
        span = self._start(name, parent, attributes, event.timestamp)
        self._add(key, _Open(span, slot))

    def _container_ended(self, slot: _Slot, event: RuntimeEvent) -> None:
        with self._lock:
            keys = self._slots.get(slot)
            entry = self._pop(keys[-1]) if keys else None
        if entry is None:
            return
        span = entry.span
        attributes = _data_attributes(event.data)
        if event.error is not None:
            attributes["error.type"] = event.error.type
        span.set_attributes(attributes)
        if event.error is not None:
            trace = self._trace
            span.set_status(trace.Status(trace.StatusCode.ERROR, event.error.message))
        span.end(end_time=_ns(event.timestamp))

    # --- the open-span table ------------------------------------------------------------

    def _start(
        self,
        name: str,
        parent: Span | None,
        attributes: dict[str, AttributeValue],
        timestamp: float,
    ) -> Span:
        # No parent of ours: the caller's current context decides (maybe a new trace).
        context = None if parent is None else self._trace.set_span_in_context(parent)
        return self._tracer.start_span(
            name,
            context=context,
            kind=self._trace.SpanKind.INTERNAL,
            attributes=attributes,
            start_time=_ns(timestamp),
        )

    def _span(self, key: _Key | None) -> Span | None:
        entry = None if key is None else self._open.get(key)
        return None if entry is None else entry.span

    def _latest(self, slot: _Slot) -> Span | None:
        keys = self._slots.get(slot)
        return self._span(keys[-1]) if keys else None

    def _add(self, key: _Key, entry: _Open) -> None:
        """Register an open span, ending whatever it displaces (the same key, or the oldest)."""
        displaced: list[_Open] = []
        with self._lock:
            previous = self._pop(key)
            if previous is not None:
                displaced.append(previous)  # a task id seen twice in one trace
            self._open[key] = entry
            if entry.slot is not None:
                self._slots.setdefault(entry.slot, []).append(key)
            while len(self._open) > self.max_open_spans:
                displaced.append(self._pop(next(iter(self._open))))  # type: ignore[arg-type]
            self.evicted += len(displaced)
        now = time.time_ns()
        for stale in displaced:
            stale.span.set_attribute("murmur.span.incomplete", True)
            stale.span.end(end_time=now)

    def _pop(self, key: _Key) -> _Open | None:
        entry = self._open.pop(key, None)
        if entry is not None and entry.slot is not None:
            keys = self._slots[entry.slot]
            keys.remove(key)
            if not keys:
                del self._slots[entry.slot]
        return entry
