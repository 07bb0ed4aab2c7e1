"""A ``BaseException`` (SystemExit, KeyboardInterrupt, ...) in one task is raised itself.

It is not a failure of that task (those are ``Exception``s): it stops the call. On both
backends it comes out as the single exception that was raised, not wrapped in a
``BaseExceptionGroup`` (as an AnyIO task group under Trio would).
"""

from __future__ import annotations

import anyio
import pytest

from murmur import AgentGroup, AgentRuntime, Edge, TaskSpec

pytestmark = pytest.mark.anyio


class Abort(BaseException):
    """A custom BaseException, like an application's own shutdown signal."""


async def test_gather_raises_a_tasks_base_exception_bare() -> None:
    raised = Abort("stop")

    async def agent(n: int) -> int:
        await anyio.lowlevel.checkpoint()
        if n == 3:
            raise raised
        return n

    async with AgentRuntime() as runtime:
        with pytest.raises(Abort) as caught:
            await runtime.gather(agent, [TaskSpec(input=n) for n in range(10)])
    assert caught.value is raised


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
# SystemExit aborts the whole Trio run: a worker it had just scheduled never starts, and
# Python says so when its coroutine is collected. That is the abort, not a leak.
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_system_exit_in_one_task_leaves_gather_sync_bare(backend: str) -> None:
    # On asyncio a SystemExit in any task stops the event loop itself (asyncio's rule):
    # it comes out of the loop, here of gather_sync, as itself; on Trio too.
    async def agent(n: int) -> int:
        await anyio.lowlevel.checkpoint()
        if n == 3:
            raise SystemExit(3)
        return n

    runtime = AgentRuntime()
    with pytest.raises(SystemExit) as caught:
        runtime.gather_sync(agent, [TaskSpec(input=n) for n in range(10)], backend=backend)
    assert caught.value.code == 3


async def test_run_group_raises_a_nodes_base_exception_bare() -> None:
    raised = Abort("stop")

    async def first(value: str) -> str:
        return value

    async def second(value: str) -> str:
        raise raised

    group = AgentGroup(name="g", topology={first: Edge(to=(second,)), second: Edge.terminal()})
    async with AgentRuntime() as runtime:
        with pytest.raises(Abort) as caught:
            await runtime.run_group(group, TaskSpec(input="x"))
    assert caught.value is raised
