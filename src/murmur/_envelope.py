"""The task envelope: one attempt of one task, as plain, serialisable data.

Everything an executor needs to run an attempt, and nothing live: the agent is named, not
handed over, so a process that only has an agent registry can run it. The caller side
(policies, the task's events, its result) builds one per attempt for any transport other
than the in-process fast path.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from ._types import TaskSpec

__all__ = ["ENVELOPE_VERSION", "EventSink", "TaskEnvelope", "current_trace_context"]

#: Bumped on any change a receiver of an older version could misread.
ENVELOPE_VERSION = 1


class TaskEnvelope(BaseModel):
    """One attempt of one task, addressed to an agent by name.

    ``deadline`` is absolute, in ``time.time()`` seconds: the attempt is cut off there (it
    travels as a point in time, so queueing on the way counts against it). ``token_cap`` is
    what the caller's ``TokenBudget`` granted the task, less what earlier attempts spent.
    ``wants`` lists the event types the caller's emitter takes; no others are built.
    """

    model_config = ConfigDict(frozen=True)

    version: int = ENVELOPE_VERSION
    agent: str = Field(min_length=1)
    task: TaskSpec
    attempt: int = Field(default=1, ge=1)
    trace_id: str
    call_id: str | None = None
    parent_call_id: str | None = None
    #: The batch (a ``gather``, a group node's fan-out) this attempt belongs to, where its
    #: attempts run elsewhere: the caller revokes them all by it at once if the batch is
    #: cancelled as a whole (``Transport.revoke_batch``). ``None`` for a single task.
    batch_id: str | None = None
    parent_task_id: str | None = None
    depth: int = Field(default=0, ge=0)
    deadline: float | None = None
    token_cap: int | None = None
    #: The caller's ``max_spawn_depth``: children this attempt spawns where it runs are
    #: held to it there.
    max_spawn_depth: int | None = None
    #: The caller's OpenTelemetry context (W3C ``traceparent`` / ``tracestate``), when
    #: OpenTelemetry is in use: spans made where the attempt runs are children of the
    #: task's span.
    trace_context: dict[str, str] = Field(default_factory=dict)
    wants: frozenset[str] = frozenset()


class EventSink(Protocol):
    """Where an executor sends the events of the attempts it runs."""

    async def emit(self, event: Any) -> None:
        """Take one ``RuntimeEvent``; must not raise."""
        ...


def current_trace_context() -> dict[str, str]:
    """The current OpenTelemetry context as W3C headers, if OpenTelemetry is in use (its
    propagation module loaded, as ``OpenTelemetryEmitter`` does); else empty, at no cost."""
    propagate = sys.modules.get("opentelemetry.propagate")
    if propagate is None:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
