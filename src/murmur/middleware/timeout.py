"""TimeoutMiddleware: a per-attempt deadline, enforced with an AnyIO cancel scope and the clock."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import sniffio

from ..errors import AgentTimeoutError, InvalidValueError
from ..events.types import EventType

if TYPE_CHECKING:
    from .._context import AgentContext
    from .._pipeline import CallNext

__all__ = ["TimeoutMiddleware"]


class TimeoutMiddleware:
    """Fails an attempt that has not ended ``seconds`` after it started with ``AgentTimeoutError``.

    An attempt still running at its deadline is really cancelled (under Trio too, across
    the asyncio bridge) before the error is raised. An attempt that ends after its deadline
    without having been cancelled (it blocked the thread, then returned or raised before
    the scope could act) fails the same way, its late output discarded: when a scope acts
    on such an attempt differs by backend (asyncio runs the attempt's next step before the
    expired timer, Trio checks deadlines at every checkpoint), the clock read at its end
    does not. ``AgentTimeoutError`` is a ``TimeoutError``, so retry treats it as retryable
    by default.

    When this stage is the innermost one, the runtime's executor leaves it out for agents
    whose code has no ``await`` (``AgentImpl.can_suspend`` is false): such an attempt never
    reaches a checkpoint, so no scope could cancel it, and the scope would cost several µs
    per attempt.
    """

    #: Runs where the agent runs, once per attempt (see ``murmur.Stage``).
    side = "executor"

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise InvalidValueError(f"timeout seconds must be > 0, got {seconds!r}")
        self.seconds = seconds

    async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
        clock = _loop_clock()
        deadline = clock() + self.seconds
        try:
            # The whole attempt runs inside the scope: an attempt that enters a cancel scope
            # or a task group (pydantic-ai, the Trio bridge) before it first suspends must do
            # so under this one, or the scope stack is corrupted when it exits.
            with anyio.CancelScope(deadline=deadline):
                output = await call_next(ctx)
                if clock() < deadline:
                    return output
        except Exception:
            if clock() < deadline:
                raise
            raise await self.timed_out(ctx)  # noqa: B904 - the late error stays its __context__
        # Our deadline cancelled the attempt, or its output came too late.
        raise await self.timed_out(ctx)

    async def timed_out(self, ctx: AgentContext) -> AgentTimeoutError:
        """Report ``ctx``'s attempt as timed out (its event); the error to raise for it."""
        await ctx.emit(EventType.ATTEMPT_TIMED_OUT, data={"timeout_seconds": self.seconds})
        return AgentTimeoutError(
            f"agent {ctx.agent!r} attempt {ctx.attempt} timed out after {self.seconds:g}s"
        )


def _loop_clock() -> Callable[[], float]:
    """The running event loop's clock (scope deadlines are on it), as a cheap callable.

    ``anyio.current_time`` finds the backend on every call; this finds it once per attempt.
    """
    library = sniffio.current_async_library()
    if library == "asyncio":
        return asyncio.get_running_loop().time
    if library == "trio":
        # Trio is running, so imported; an import statement here would cost ~0.1 µs a call.
        trio = sys.modules["trio"]
        return trio.lowlevel.current_clock().current_time  # type: ignore[no-any-return]
    return anyio.current_time
