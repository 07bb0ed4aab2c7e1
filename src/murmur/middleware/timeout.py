"""TimeoutMiddleware: a per-attempt deadline enforced with an AnyIO cancel scope."""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
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

    Cost: the deadline is measured from the start of the attempt, but the cancel scope
    that enforces it is entered only once the attempt first suspends. An attempt that
    finishes without suspending could not have been cancelled anyway (cancellation is
    delivered at suspension points), so it skips the scope, and its cost, entirely.
    """

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"timeout seconds must be > 0, got {seconds!r}")
        self.seconds = seconds

    async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
        deadline = anyio.current_time() + self.seconds
        coro = call_next(ctx)
        if not isinstance(coro, Coroutine):
            # Not a plain coroutine (a custom awaitable): no fast path, just the scope.
            with anyio.CancelScope(deadline=deadline):
                return await coro
        else:
            try:
                suspended_on = coro.send(None)
            except StopIteration as done:
                return done.value
            with anyio.CancelScope(deadline=deadline):
                return await _resume(coro, suspended_on)
        # Only reached when our own deadline cancelled the attempt.
        await ctx.emit(EventType.ATTEMPT_TIMED_OUT, data={"timeout_seconds": self.seconds})
        raise AgentTimeoutError(
            f"agent {ctx.agent!r} attempt {ctx.attempt} timed out after {self.seconds:g}s"
        )


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], suspended_on: Any) -> Generator[Any, Any, Any]:
    """Finish driving ``coro`` from the event loop, as ``await`` would have.

    ``coro`` has already run its first step and suspended on ``suspended_on``; what the
    loop sends or throws (results, cancellation) is passed through unchanged.
    """
    while True:
        try:
            sent = yield suspended_on
        except BaseException as thrown:  # cancellation and the like: hand it to coro
            try:
                suspended_on = coro.throw(thrown)
            except StopIteration as done:
                return done.value
        else:
            try:
                suspended_on = coro.send(sent)
            except StopIteration as done:
                return done.value
