"""Review: the helper that stops an adapter's background loop never swallows the
cancellation of the task stopping it."""

from __future__ import annotations

import asyncio

import pytest

from distributed.test_adapters import on_asyncio
from murmur._cancellation import cancel_and_wait

pytestmark = pytest.mark.anyio


# -- stopping a background loop --------------------------------------------------------


async def test_cancel_and_wait_never_swallows_the_awaiters_cancellation() -> None:
    """The stopper is cancelled at the very moment the loop it stops ends (as redis-py's
    reply arrives with a cancellation): the stopper's cancellation still propagates."""

    async def scenario() -> tuple[bool, bool, bool]:
        reply = asyncio.Event()
        cleaning = asyncio.Event()
        past_the_wait = asyncio.Event()

        async def loop() -> None:  # a background loop finishing one call when cancelled
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cleaning.set()
                await reply.wait()
                raise

        async def stopper(task: asyncio.Task[None]) -> None:
            await cancel_and_wait(task)
            past_the_wait.set()

        task = asyncio.get_running_loop().create_task(loop())
        await asyncio.sleep(0)  # the loop is running
        stopping = asyncio.get_running_loop().create_task(stopper(task))
        await cleaning.wait()  # the stopper waits for the loop to end
        reply.set()  # the loop ends...
        stopping.cancel()  # ...as the stopper is cancelled
        await asyncio.wait([stopping, task])
        return stopping.cancelled(), past_the_wait.is_set(), task.cancelled()

    stopper_cancelled, went_on, loop_cancelled = await on_asyncio(scenario)
    assert stopper_cancelled
    assert not went_on
    assert loop_cancelled


async def test_cancel_and_wait_raises_the_loops_own_failure() -> None:
    async def scenario() -> None:
        async def loop() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                raise RuntimeError("the loop broke")

        task = asyncio.get_running_loop().create_task(loop())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="the loop broke"):
            await cancel_and_wait(task)
        await cancel_and_wait(None)  # nothing to stop

    await on_asyncio(scenario)
