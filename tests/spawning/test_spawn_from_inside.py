"""A top-level call made from inside a running task is that task's child (never a hang).

``runtime.run(child, ...)`` inside an agent, with no ``parent=``, used to wait on the
budget (and the concurrency) its own ancestor held, forever. The runtime now recognises a
call made from inside one of its own running tasks and runs it as that task's child: one
spawn level deeper, same trace and budget, with the children's rules for the budget.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import RunContext
from pydantic_ai.models.test import TestModel

from murmur import (
    AgentContext,
    AgentGroup,
    AgentRuntime,
    Edge,
    EventType,
    RuntimeOptions,
    TaskSpec,
    TokenBudget,
    current_context,
    from_pydantic_ai,
)
from support import Recorder

pytestmark = pytest.mark.anyio

HANG_GUARD = 30


def budgeted() -> RuntimeOptions:
    # One full reservation: the parent holds all of it while it runs.
    return RuntimeOptions(token_budget=TokenBudget(limit=100, reserve_per_task=100))


async def test_runtime_run_inside_an_agent_runs_a_child_instead_of_hanging() -> None:
    seen: list[tuple[int, str | None]] = []

    async def child(value: str) -> str:
        ctx = current_context()
        seen.append((ctx.depth, ctx.parent_task_id))
        ctx.report_usage(input_tokens=10)
        return value.upper()

    async def parent(value: str, ctx: AgentContext) -> str:
        result = await runtime.run(child, TaskSpec(input=value))  # no parent=
        return result.unwrap() + "!"

    events = Recorder()
    async with AgentRuntime(options=budgeted(), event_emitter=events) as runtime:
        with anyio.fail_after(HANG_GUARD):
            result = await runtime.run(parent, TaskSpec(input="hi", task_id="p"))
    assert result.output == "HI!"
    assert seen == [(1, "p")]
    assert [e.data["child_agent"] for e in events.of(EventType.CHILD_SPAWNED)] == ["child"]
    # One trace: the child belongs to its parent's call tree.
    assert len({e.trace_id for e in events.events}) == 1


async def test_runtime_gather_and_run_group_inside_an_agent_are_children_too() -> None:
    depths: list[int] = []

    async def leaf(value: str) -> str:
        depths.append(current_context().depth)
        return value + "."

    group = AgentGroup(name="inner", topology={leaf: Edge.terminal()})

    async def parent(value: str, ctx: AgentContext) -> str:
        runtime = ctx.runtime
        batch = await runtime.gather(leaf, [TaskSpec(input="a"), TaskSpec(input="b")])
        grouped = await runtime.run_group(group, TaskSpec(input="c"))  # no parent=ctx
        return "".join(r.unwrap() for r in batch) + str(grouped.output)

    async with AgentRuntime(options=budgeted()) as runtime:
        with anyio.fail_after(HANG_GUARD):
            result = await runtime.run(parent, TaskSpec(input="x"))
    assert result.output == "a.b.c."
    assert depths == [1, 1, 1]


async def test_a_pydantic_ai_tool_calling_runtime_run_spawns_a_child() -> None:
    async def child(value: str) -> str:
        return f"child({value}) at depth {current_context().depth}"

    async def ask_child(ctx: RunContext[None], question: str) -> str:
        result = await runtime.run(child, TaskSpec(input=question))
        return result.unwrap()

    model = TestModel(call_tools=["ask_child"])
    agent = from_pydantic_ai(PydanticAgent(model, tools=[ask_child]), name="asker")
    options = RuntimeOptions(token_budget=TokenBudget(limit=5_000, reserve_per_task=5_000))
    async with AgentRuntime(options=options) as runtime:
        with anyio.fail_after(HANG_GUARD):
            result = await runtime.run(agent, TaskSpec(input="go"))
    assert result.is_ok(), result.error
    assert "at depth 1" in str(result.output)


async def test_another_runtime_called_from_inside_an_agent_runs_top_level() -> None:
    async def leaf(value: str) -> int:
        return current_context().depth

    async def parent(value: str, ctx: AgentContext) -> Any:
        async with AgentRuntime() as other:
            return (await other.run(leaf, TaskSpec(input=value))).unwrap()

    async with AgentRuntime() as runtime:
        result = await runtime.run(parent, TaskSpec(input="x"))
    assert result.output == 0


async def test_a_call_from_outside_any_task_is_top_level() -> None:
    async def leaf(value: str) -> tuple[int, str | None]:
        ctx = current_context()
        return ctx.depth, ctx.parent_task_id

    async with AgentRuntime(options=budgeted()) as runtime:
        first = await runtime.run(leaf, TaskSpec(input="x"))
        second = await runtime.run(leaf, TaskSpec(input="y"))
    assert first.output == second.output == (0, None)
