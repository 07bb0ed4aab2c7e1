"""An unclosed runtime's threads go when it is collected, whatever its transport.

AgentRuntime's docs: "Release them with ``async with`` or ``aclose()``; otherwise they go
when the runtime is garbage-collected". With ``transport=LoopbackTransport(Executor(...))``
the executor starts its own asyncio bridge under Trio; collecting the runtime stops it.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref

import anyio
import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.models.test import TestModel

from murmur import AgentRuntime, TaskSpec, from_pydantic_ai
from murmur.transport import Executor, LoopbackTransport

pytestmark = pytest.mark.anyio


def bridge_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("murmur-")}


async def test_an_unclosed_runtime_with_a_loopback_transport_stops_its_bridge_when_collected() -> (
    None
):
    before = bridge_threads()
    agent = from_pydantic_ai(PydanticAgent(TestModel()), name="model")
    executor = Executor(agents={"model": agent})
    runtime = AgentRuntime(transport=LoopbackTransport(executor))
    assert (await runtime.run(agent, TaskSpec(input="hi"))).is_ok()
    started = bridge_threads() - before
    bridge = executor._owned
    if bridge is not None:  # under Trio: the executor started its own bridge
        # The loop thread wakes the caller from a call's done callback and may still hold
        # that callback (and the call's context) a moment: let it finish its turn first.
        loop = bridge.loop
        assert loop is not None
        await anyio.to_thread.run_sync(
            lambda: asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(30)
        )

    # Tasks pydantic-ai started on this loop (asyncio) finish their turn too.
    await anyio.wait_all_tasks_blocked()

    collected = weakref.ref(runtime)
    del runtime, executor, bridge
    gc.collect()
    assert collected() is None
    for thread in started:
        await anyio.to_thread.run_sync(thread.join, 5)
    assert [t for t in started if t.is_alive()] == []
