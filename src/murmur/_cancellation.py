"""Telling a real cancellation of the running task from a stray ``CancelledError``.

A cancellation is real when it was sent to the running task while the work in question
ran: on asyncio a cancel scope, ``asyncio.timeout`` or ``task.cancel()`` marks the task
(``Task.cancelling()`` goes up); a ``CancelledError`` the task merely caught from a future
that someone else cancelled leaves the count as it was. So the count is noted when a call
starts (``pending_cancellations``) and compared when a ``CancelledError`` arrives: a count
left over from an earlier, shielded cancellation (clean-up code running under
``CancelScope(shield=True)``) does not make a later stray one real. On Trio only Trio's own
machinery raises ``trio.Cancelled``: an ``asyncio.CancelledError`` there is never real.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from .errors import StrayCancellationError

__all__ = [
    "cancel_and_wait",
    "is_real_cancellation",
    "is_stray",
    "pending_cancellations",
    "running_task",
    "stray_cancellation",
]

_running_loop = asyncio._get_running_loop
_current_task = asyncio.current_task


def running_task() -> object | None:
    """The running asyncio task (``None`` on Trio, where only Trio raises cancellations)."""
    return _current_task() if _running_loop() is not None else None


def pending_cancellations() -> int:
    """How many cancellation requests the running task has pending (asyncio; 0 on Trio)."""
    if _running_loop() is None:
        return 0
    task = _current_task()
    return 0 if task is None else task.cancelling()


def is_real_cancellation(exc: BaseException, baseline: int = 0) -> bool:
    """True when ``exc`` is a cancellation sent to the running task after it had
    ``baseline`` pending cancellation requests (see ``pending_cancellations``)."""
    if isinstance(exc, asyncio.CancelledError):
        if _running_loop() is None:
            return False  # under Trio: raised by some library, never by Trio
        task = _current_task()
        return task is None or task.cancelling() > baseline
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(exc, trio.Cancelled)


def is_stray(exc: BaseException, baseline: int = 0) -> bool:
    """True when ``exc`` is an ``asyncio.CancelledError`` not sent to the running task."""
    return isinstance(exc, asyncio.CancelledError) and not is_real_cancellation(exc, baseline)


def stray_cancellation(
    exc: BaseException, agent: str, baseline: int = 0
) -> StrayCancellationError | None:
    """``exc`` as a ``StrayCancellationError`` if it is a cancellation not sent to this task."""
    if not is_stray(exc, baseline):
        return None
    error = StrayCancellationError(
        f"agent {agent!r} raised CancelledError although its task was not cancelled (it "
        "awaited a future or task that something else cancelled); this task failed, its "
        "batch goes on"
    )
    error.__cause__ = exc
    return error


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (an adapter's own background loop; ``None``: nothing to do) and wait
    for it to end; raise what it failed with, if not its cancellation.

    ``asyncio.wait`` rather than ``await task``: awaiting the task raises its
    ``CancelledError``, and a ``CancelledError`` caught there cannot be told from one sent
    to the awaiter itself at the same moment (and ``task.cancel()`` on the awaiter would
    reach through to the task), so suppressing it would swallow the awaiter's own
    cancellation. ``asyncio.wait`` raises only the awaiter's, and never re-cancels the
    task; a task that does not end when cancelled is waited for until it ends.
    """
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.result()  # its own failure, if any
