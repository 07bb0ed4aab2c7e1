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

    A batch cancelled as a whole (its caller's scope, ``fail_fast``) is first revoked as a
    whole: ``revoke_batch`` is called once, before any of its ``submit`` calls is
    cancelled.
    """

    @abstractmethod
    async def submit(self, envelope: TaskEnvelope, events: EventSink) -> AgentResult[Any]:
        """Run one attempt and return its result (its usage and duration are the attempt's)."""

    async def revoke_batch(self, batch_id: str) -> None:  # noqa: B027 - optional hook
        """Stop every attempt carrying ``batch_id`` (``TaskEnvelope.batch_id``), those sent
        and those still queued, wherever they are: their batch was cancelled as a whole.

        Called before the batch's ``submit`` calls are cancelled (each is cancelled next);
        must return within a short bound and never raise. By default nothing: each
        cancelled ``submit`` stops its own attempt.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release the transport's resources."""
