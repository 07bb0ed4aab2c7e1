"""The transport seam: where a runtime's attempts run when not in this process.

A transport takes plain data: a ``TaskEnvelope`` (the agent by name, the ``TaskSpec``,
trace and call ids, depth, deadline, the granted token cap, the wanted event types) and an
``EventSink`` for the events the attempt reports. It returns the attempt's
``AgentResult``. Whatever carries them (a broker, a pipe) runs them on an ``Executor``
that knows the agent by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._envelope import EventSink, TaskEnvelope
    from .._types import AgentResult

__all__ = ["Transport"]


class Transport(ABC):
    """Runs attempts for a runtime and owns whatever connections that takes.

    ``submit`` returns the attempt's result; agent failures are results, not exceptions.
    Cancelling ``submit`` must cancel the attempt wherever it runs.
    """

    @abstractmethod
    async def submit(self, envelope: TaskEnvelope, events: EventSink) -> AgentResult[Any]:
        """Run one attempt and return its result (its usage and duration are the attempt's)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release the transport's resources."""
