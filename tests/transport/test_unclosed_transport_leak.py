"""An unclosed runtime's threads go when it is collected, whatever its transport.

AgentRuntime's docs: "Release them with ``async with`` or ``aclose()``; otherwise they go
when the runtime is garbage-collected". With ``transport=LoopbackTransport(Executor(...))``
the executor starts its own asyncio bridge under Trio; collecting the runtime stops it.
"""

from __future__ import annotations

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
    runtime = AgentRuntime(transport=LoopbackTransport(Executor(agents={"model": agent})))
    assert (await runtime.run(agent, TaskSpec(input="hi"))).is_ok()
    started = bridge_threads() - before

    collected = weakref.ref(runtime)
    del runtime
    # The last references go once the bridge thread has finished the call: wait for that.
    with anyio.fail_after(30):
        while collected() is not None:
            await anyio.sleep(0.01)
            gc.collect()
    for thread in started:
        await anyio.to_thread.run_sync(thread.join, 5)
    assert [t for t in started if t.is_alive()] == []
