"""Group commit: writes made at about the same time go to the broker in one round trip.

A ``GroupCommit`` batches without a timer. A write that arrives while no flush is under
way is flushed at once (a lone ``run`` pays no added latency); writes that arrive while a
flush waits on the broker queue up, and go together in the next flush, started as soon as
that one ends — so the batch size follows the load by itself: one at a time when idle,
hundreds at a time when a gather publishes a thousand tasks.

A flush runs in a task of its own, not in any writer's: a writer cancelled while its
batch is being written stops waiting, and the batch is written all the same, for the
others in it (its own write may or may not reach the broker, as with any cancelled
write). A writer cancelled while its write is still queued takes it back: never sent.

Runs on one asyncio loop (the adapters' own).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

_T = TypeVar("_T")

#: Writes in one round trip, at most.
DEFAULT_LIMIT = 500


class _Write(Generic[_T]):
    __slots__ = ("done", "item")

    def __init__(self, item: _T, done: asyncio.Future[None]) -> None:
        self.item = item
        self.done = done


class GroupCommit(Generic[_T]):
    """Calls ``flush`` with the writes queued together (in order, at most ``limit``)."""

    def __init__(
        self,
        flush: Callable[[Sequence[_T]], Coroutine[object, object, None]],
        *,
        limit: int = DEFAULT_LIMIT,
    ) -> None:
        self._flush = flush
        self._limit = limit
        #: Writes not yet in a batch.
        self._queue: deque[_Write[_T]] = deque()
        #: The flush under way, if any.
        self._flushing: asyncio.Task[None] | None = None

    async def write(self, item: _T) -> None:
        """Write ``item`` (with whatever else is queued now); returns once it is written.

        Raises:
            Exception: what ``flush`` raised for the batch this write was in.
        """
        write = _Write(item, asyncio.get_running_loop().create_future())
        self._queue.append(write)
        if self._flushing is None:
            self._start()
        try:
            await write.done
        except asyncio.CancelledError:
            if write in self._queue:  # not in a batch yet: never sent
                self._queue.remove(write)
            raise

    async def drain(self) -> None:
        """Wait for the writes under way and queued (their failures are their writers')."""
        while self._flushing is not None:
            await asyncio.wait([self._flushing])

    def _start(self) -> None:
        batch: list[_Write[_T]] = []
        while self._queue and len(batch) < self._limit:
            write = self._queue.popleft()
            if not write.done.done():  # else its writer was cancelled: not sent
                batch.append(write)
        if not batch:
            self._flushing = None
            return
        task = asyncio.get_running_loop().create_task(self._flush([w.item for w in batch]))
        self._flushing = task
        task.add_done_callback(lambda _: self._flushed(batch, task))

    def _flushed(self, batch: list[_Write[_T]], task: asyncio.Task[None]) -> None:
        error = (
            ConnectionError("a batched write was cancelled")
            if task.cancelled()
            else task.exception()
        )
        for write in batch:
            if write.done.done():
                continue  # its writer was cancelled meanwhile
            if error is None:
                write.done.set_result(None)
            else:
                write.done.set_exception(error)
        self._start()  # what queued up meanwhile, at once
