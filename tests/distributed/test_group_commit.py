"""Group commit: writes made together are flushed together, none is lost or left waiting.

``GroupCommit`` lives on the adapters' asyncio loop (under Trio too: the broker I/O runs on
the runtime's helper asyncio loop), so these tests drive it with asyncio directly; the
contract tests cover it end to end on both backends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from murmur.distributed._group import DEFAULT_LIMIT, GroupCommit


class Store:
    """A flush that records its batches and can be held open or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.entered = asyncio.Event()
        self.gate: asyncio.Event | None = None
        #: A batch holding this item fails.
        self.poison: int | None = None

    async def held_flush(
        self, limit: int = DEFAULT_LIMIT
    ) -> tuple[GroupCommit[int], asyncio.Event, asyncio.Future[None]]:
        """A group writing here, its first write (0) flushing and held: the gate that lets
        it go on, and that write."""
        group = GroupCommit(self.flush, limit=limit)
        self.gate = gate = asyncio.Event()
        first = asyncio.ensure_future(group.write(0))
        await self.entered.wait()
        return group, gate, first

    async def flush(self, items: Sequence[int]) -> None:
        self.entered.set()
        if self.gate is not None:
            gate, self.gate = self.gate, None
            await gate.wait()
        if self.poison in items:
            raise ConnectionError(f"down at {self.poison}")
        self.batches.append(list(items))


def test_a_lone_write_is_flushed_at_once_and_alone() -> None:
    async def main() -> None:
        store = Store()
        group = GroupCommit(store.flush)
        await group.write(1)
        await group.write(2)
        assert store.batches == [[1], [2]]

    asyncio.run(main())


def test_writes_queued_during_a_flush_go_together_in_order() -> None:
    async def main() -> None:
        store = Store()
        group, gate, first = await store.held_flush(limit=3)
        rest = [asyncio.ensure_future(group.write(i)) for i in range(1, 6)]
        await asyncio.sleep(0)  # the others queue behind the held flush
        gate.set()
        await asyncio.gather(first, *rest)
        assert store.batches == [[0], [1, 2, 3], [4, 5]]

    asyncio.run(main())


def test_a_failed_flush_fails_every_write_of_its_batch_and_no_other() -> None:
    async def main() -> None:
        store = Store()
        store.poison = 2
        group, gate, first = await store.held_flush()
        batch = [asyncio.ensure_future(group.write(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        gate.set()
        outcomes = await asyncio.gather(first, *batch, return_exceptions=True)
        assert outcomes[0] is None
        assert [str(outcome) for outcome in outcomes[1:]] == ["down at 2", "down at 2"]
        await group.write(3)  # the group goes on
        assert store.batches == [[0], [3]]

    asyncio.run(main())


def test_a_write_cancelled_while_queued_is_never_flushed() -> None:
    async def main() -> None:
        store = Store()
        group, gate, first = await store.held_flush()
        cancelled = asyncio.ensure_future(group.write(1))
        kept = asyncio.ensure_future(group.write(2))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, kept)
        assert cancelled.cancelled()
        assert store.batches == [[0], [2]]

    asyncio.run(main())


def test_a_writer_cancelled_while_its_batch_is_written_does_not_stop_the_batch() -> None:
    async def main() -> None:
        store = Store()
        group, gate, first = await store.held_flush()
        queued = [asyncio.ensure_future(group.write(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        first.cancel()  # its flush goes on, in a task of its own
        await asyncio.sleep(0)
        gate.set()
        await asyncio.wait_for(asyncio.gather(*queued), timeout=5)
        assert store.batches == [[0], [1, 2]]
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(main())


def test_writers_cancelled_together_leave_no_one_stuck() -> None:
    async def main() -> None:
        store = Store()
        group, gate, first = await store.held_flush()
        waiting = [asyncio.ensure_future(group.write(i)) for i in range(1, 50)]
        await asyncio.sleep(0)
        for task in [first, *waiting]:
            task.cancel()
        gate.set()
        await asyncio.gather(first, *waiting, return_exceptions=True)
        await asyncio.wait_for(group.write(99), timeout=5)  # the group goes on
        await group.drain()
        assert store.batches == [[0], [99]]

    asyncio.run(main())
