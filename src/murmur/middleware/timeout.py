"""TimeoutMiddleware: a per-attempt deadline enforced with an AnyIO cancel scope."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from ..errors import AgentTimeoutError
from ..events.types import EventType

if TYPE_CHECKING:
    from .._context import AgentContext
    from .._pipeline import CallNext

__all__ = ["TimeoutMiddleware"]


class TimeoutMiddleware:
    """Cancels an attempt that runs longer than ``seconds`` and raises ``AgentTimeoutError``.

    The attempt is really cancelled (under Trio too, across the asyncio bridge) before the
    error is raised. ``AgentTimeoutError`` is a ``TimeoutError``, so retry treats it as
    retryable by default.

    When this stage is the innermost one, the runtime's executor leaves it out for agents
    whose code has no ``await`` (``AgentImpl.can_suspend`` is false): such an attempt never
    reaches a checkpoint, so no scope could cancel it (a deadline that passes during such a
    call is noticed by nothing, with a scope or without). That saves the scope's cost
    (several µs) on every attempt of CPU-only function agents.
    """

    #: Runs where the agent runs, once per attempt (see ``murmur.Stage``).
    side = "executor"

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"timeout seconds must be > 0, got {seconds!r}")
        self.seconds = seconds

    async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
        # The whole attempt runs inside the scope: an attempt that enters a cancel scope or a
        # task group (pydantic-ai, the Trio bridge) before it first suspends must do so under
        # this one, or the scope stack is corrupted when it exits.
        with anyio.CancelScope(deadline=anyio.current_time() + self.seconds):
            return await call_next(ctx)
        # Only reached when our own deadline cancelled the attempt.
        await ctx.emit(EventType.ATTEMPT_TIMED_OUT, data={"timeout_seconds": self.seconds})
        raise AgentTimeoutError(
            f"agent {ctx.agent!r} attempt {ctx.attempt} timed out after {self.seconds:g}s"
        )
