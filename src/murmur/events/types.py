"""Typed runtime events: one frozen, JSON-serialisable model per lifecycle moment."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from .._types import Usage, trusted_constructor

__all__ = [
    "ALL_EVENT_TYPES",
    "EventEmitter",
    "EventError",
    "EventType",
    "RuntimeEvent",
    "emitter_stages",
    "wanted_types",
]


class EventType(StrEnum):
    """Every moment the runtime reports."""

    TASK_STARTED = "task.started"
    TASK_SUCCEEDED = "task.succeeded"
    TASK_FAILED = "task.failed"
    TASK_CANCELLED = "task.cancelled"
    RETRY_SCHEDULED = "task.retry_scheduled"
    ATTEMPT_TIMED_OUT = "task.attempt_timed_out"
    BUDGET_EXCEEDED = "budget.exceeded"
    RATE_LIMIT_WAITED = "rate_limit.waited"
    DEPTH_LIMIT_EXCEEDED = "depth.limit_exceeded"
    CHILD_SPAWNED = "task.child_spawned"
    BATCH_STARTED = "batch.started"
    BATCH_COMPLETED = "batch.completed"
    GROUP_STARTED = "group.started"
    NODE_STARTED = "group.node_started"
    NODE_COMPLETED = "group.node_completed"
    GROUP_COMPLETED = "group.completed"
    WORKER_STARTED = "worker.started"
    WORKER_STOPPED = "worker.stopped"
    WORKER_HEARTBEAT = "worker.heartbeat"


class EventError(BaseModel):
    """An error as events carry it: type and message."""

    model_config = ConfigDict(frozen=True)

    type: str
    message: str

    @classmethod
    def from_exception(cls, error: BaseException) -> EventError:
        return cls.model_construct(type=type(error).__qualname__, message=str(error))


class RuntimeEvent(BaseModel):
    """One thing that happened in the runtime."""

    model_config = ConfigDict(frozen=True)

    type: EventType
    timestamp: float = Field(default_factory=time.time)
    trace_id: str | None = None
    task_id: str | None = None
    parent_task_id: str | None = None
    call_id: str | None = None
    parent_call_id: str | None = None
    agent: str | None = None
    depth: int = 0
    attempt: int | None = None
    duration: float | None = None
    usage: Usage | None = None
    error: EventError | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def _build(
        cls,
        type: EventType,
        trace_id: str | None,
        task_id: str | None,
        parent_task_id: str | None,
        agent: str | None,
        depth: int,
        attempt: int | None,
        duration: float | None,
        usage: Usage | None,
        error: EventError | None,
        data: dict[str, Any],
        *,
        call_id: str | None = None,
        parent_call_id: str | None = None,
    ) -> RuntimeEvent:
        """Trusted constructor for the runtime's hot path (no validation, all fields given)."""
        build: Callable[[dict[str, Any]], RuntimeEvent] = (
            _trusted_event if cls is RuntimeEvent else trusted_constructor(cls)
        )
        return build(
            {
                "type": type,
                "timestamp": time.time(),
                "trace_id": trace_id,
                "task_id": task_id,
                "parent_task_id": parent_task_id,
                "call_id": call_id,
                "parent_call_id": parent_call_id,
                "agent": agent,
                "depth": depth,
                "attempt": attempt,
                "duration": duration,
                "usage": usage,
                "error": error,
                "data": data,
            }
        )


@runtime_checkable
class EventEmitter(Protocol):
    """Anything with ``async def emit(self, event)``.

    Two optional hooks: ``event_types()`` (the types it wants; the runtime builds no
    others) and ``pipeline_stages()`` (stages it needs around every task, which the runtime
    puts outermost in its pipeline, as ``OpenTelemetryEmitter`` does to make each task's
    span current while the task runs).
    """

    async def emit(self, event: RuntimeEvent) -> None:
        """Receive one event; must not raise (the runtime isolates it if it does)."""
        ...


_trusted_event: Callable[[dict[str, Any]], RuntimeEvent] = trusted_constructor(RuntimeEvent)

ALL_EVENT_TYPES: frozenset[EventType] = frozenset(EventType)


def wanted_types(emitter: object) -> frozenset[EventType] | None:
    """What ``emitter`` wants, from its optional ``event_types()``; ``None`` means all."""
    hook = getattr(emitter, "event_types", None)
    if hook is None:
        return None
    wanted = hook()
    return None if wanted is None else frozenset(wanted)


def emitter_stages(emitter: object) -> list[Any]:
    """The pipeline stages ``emitter`` asks for, from its optional ``pipeline_stages()``."""
    hook = getattr(emitter, "pipeline_stages", None)
    return [] if hook is None else list(hook())
