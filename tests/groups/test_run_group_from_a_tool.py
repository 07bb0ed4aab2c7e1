"""``runtime.run_group`` from a pydantic-ai tool runs its nodes at home.

Under Trio a pydantic-ai agent runs on the runtime's asyncio bridge thread; children its
tools spawn with ``runtime.run`` / ``ctx.run`` / ``ctx.run_group`` come back home and run
under Trio, on the runtime's thread (where its budget, emitter and cancel scopes live).
``runtime.run_group`` called there, without ``parent=`` (the reshape makes it the tool's
task's child) or with ``parent=ctx`` (as docs/groups.md shows), must do the same.
"""

from __future__ import annotations

import threading

import anyio
import pytest
import sniffio
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import RunContext
from pydantic_ai.models.test import TestModel

from murmur import AgentGroup, AgentRuntime, Edge, TaskSpec, current_context, from_pydantic_ai

pytestmark = pytest.mark.anyio


async def where(value: str) -> str:
    return f"{sniffio.current_async_library()}@{threading.current_thread().name}"


GROUP = AgentGroup(name="inner", topology={where: Edge.terminal()})


@pytest.mark.parametrize("explicit_parent", [False, True], ids=["auto", "parent=ctx"])
async def test_run_group_from_a_tool_runs_its_nodes_where_run_runs_its_child(
    explicit_parent: bool,
) -> None:
    seen: dict[str, str] = {}

    async def ask(ctx: RunContext[None], question: str) -> str:
        seen["run"] = (await runtime.run(where, TaskSpec(input=question))).unwrap()
        parent = current_context() if explicit_parent else None
        grouped = await runtime.run_group(GROUP, TaskSpec(input=question), parent=parent)
        seen["run_group"] = str(grouped.output)
        return "done"

    agent = from_pydantic_ai(PydanticAgent(TestModel(call_tools=["ask"]), tools=[ask]), name="a")
    async with AgentRuntime() as runtime:
        with anyio.fail_after(30):
            result = await runtime.run(agent, TaskSpec(input="go"))
    assert result.is_ok(), result.error
    home = f"{sniffio.current_async_library()}@MainThread"
    assert seen["run"] == home
    # Under Trio the group's node ran on "asyncio@murmur-asyncio-bridge".
    assert seen["run_group"] == home
