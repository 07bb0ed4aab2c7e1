"""Telling a real cancellation of the running task from a stray ``CancelledError``."""

from __future__ import annotations

import asyncio

import anyio

from .errors import StrayCancellationError

__all__ = ["is_real_cancellation", "stray_cancellation"]


def is_real_cancellation(exc: BaseException) -> bool:
    """True when ``exc`` is a cancellation delivered to the running task by a cancel scope.

    On asyncio a cancel scope (or ``task.cancel()``) marks the task as being cancelled
    (``Task.cancelling()``); a ``CancelledError`` the task merely caught from a future that
    someone else cancelled leaves that count at zero. On Trio only Trio's own machinery
    raises ``trio.Cancelled``: an ``asyncio.CancelledError`` there is never real.
    """
    if not isinstance(exc, anyio.get_cancelled_exc_class()):
        return False
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        return task is None or task.cancelling() > 0
    return True


def stray_cancellation(exc: BaseException, agent: str) -> StrayCancellationError | None:
    """``exc`` as a ``StrayCancellationError`` if it is a cancellation not sent to this task."""
    if not isinstance(exc, asyncio.CancelledError) or is_real_cancellation(exc):
        return None
    error = StrayCancellationError(
        f"agent {agent!r} raised CancelledError although its task was not cancelled (it "
        "awaited a future or task that something else cancelled); this task failed, its "
        "batch goes on"
    )
    error.__cause__ = exc
    return error
