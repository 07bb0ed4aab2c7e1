"""Group commit: writes made at about the same time go to the broker in one round trip.

A ``GroupCommit`` batches without a timer. The first writer to arrive while no flush is
under way flushes at once (a lone ``run`` pays no added latency); writers that arrive
while it waits on the broker queue up, and the same writer flushes them all together as
soon as it is back — so the batch size follows the load by itself: one at a time when
idle, hundreds at a time when a gather publishes a thousand tasks.

It needs no background task: the flushing is done by the writers themselves, one at a
time. A writer cancelled while it flushes hands the duty to the next writer waiting, so
no write is left unflushed. A writer cancelled while its write is still queued takes it
back (it was never sent); once its batch is being written, the write may or may not
reach the broker, as with any cancelled write.

Runs on one asyncio loop (the adapters' own).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

_T = TypeVar("_T")

#: Writes in one round trip, at most.
DEFAULT_LIMIT = 500

_LEAD = object()
_DONE = object()


class _Write(Generic[_T]):
    __slots__ = ("error", "item", "wake")

    def __init__(self, item: _T, wake: asyncio.Future[object]) -> None:
        self.item = item
        #: Resolved with ``_LEAD`` (flush now) or ``_DONE`` (written, or ``error``).
        self.wake = wake
        self.error: Exception | None = None


class GroupCommit(Generic[_T]):
    """Calls ``flush`` with the writes queued together (in order, at most ``limit``)."""

    def __init__(
        self, flush: Callable[[Sequence[_T]], Awaitable[None]], *, limit: int = DEFAULT_LIMIT
    ) -> None:
        self._flush = flush
        self._limit = limit
        #: Writes not yet in a batch; empty whenever no writer is flushing.
        self._queue: deque[_Write[_T]] = deque()
        self._flushing = False

    async def write(self, item: _T) -> None:
        """Write ``item`` (with whatever else is queued now); returns once it is written.

        Raises:
            Exception: what ``flush`` raised for the batch this write was in.
        """
        write = _Write(item, asyncio.get_running_loop().create_future())
        self._queue.append(write)
        if self._flushing:
            try:
                woken = await write.wake
            except asyncio.CancelledError:
                if write in self._queue:  # not in a batch yet: never sent
                    self._queue.remove(write)
                    if not write.wake.cancelled() and write.wake.result() is _LEAD:
                        self._flushing = False  # the duty came just as it was cancelled
                        self._hand_over()
                raise
            if woken is _DONE:
                if write.error is not None:
                    raise write.error
                return
        await self._lead(write)

    async def _lead(self, mine: _Write[_T]) -> None:
        """Flush one batch (``mine`` first in it), then hand the duty on."""
        self._flushing = True
        batch: list[_Write[_T]] = []
        while self._queue and len(batch) < self._limit:
            write = self._queue.popleft()
            if not write.wake.cancelled():  # else its writer was cancelled: not sent
                batch.append(write)
        try:
            await self._flush([write.item for write in batch])
        except asyncio.CancelledError:
            # This writer was cancelled: the others' writes may or may not have gone;
            # they fail rather than wait for good.
            for write in batch:
                _settle(write, ConnectionError("a batched write was interrupted"))
            raise
        except Exception as exc:
            for write in batch:
                _settle(write, exc)
        else:
            for write in batch:
                _settle(write, None)
        finally:
            self._flushing = False
            self._hand_over()
        if mine.error is not None:
            raise mine.error

    def _hand_over(self) -> None:
        """Make the first queued writer flush what is queued (none: nobody flushes)."""
        while self._queue:
            first = self._queue[0]
            if first.wake.cancelled():
                # Its writer was cancelled (asyncio cancels the future it waits on) and
                # has yet to take its write back: it is not sent.
                self._queue.popleft()
                continue
            self._flushing = True
            first.wake.set_result(_LEAD)
            return


def _settle(write: _Write[_T], error: Exception | None) -> None:
    write.error = error
    if not write.wake.done():
        write.wake.set_result(_DONE)
