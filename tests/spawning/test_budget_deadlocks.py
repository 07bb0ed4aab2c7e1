"""Calls into a runtime sharing a TokenBudget never wait on their own caller's reservation."""

from __future__ import annotations

import anyio
import pytest

from murmur import AgentContext, AgentRuntime, RuntimeOptions, TaskSpec, TokenBudget
from murmur.middleware import CostTrackingMiddleware

pytestmark = pytest.mark.anyio

# These calls hang rather than fail: the guard turns the hang into a test failure.
HANG_GUARD = 5


async def leaf(text: str) -> str:
    await anyio.lowlevel.checkpoint()
    return text.upper()


async def test_a_call_back_through_a_runtime_without_budget_does_not_hang() -> None:
    # main (budget) -> helper runtime (no budget) -> back into main: the innermost call
    # waits on the reservation its own ancestor (main's first task) holds.
    budget = TokenBudget(limit=100, reserve_per_task=100)
    async with (
        AgentRuntime(options=RuntimeOptions(token_budget=budget)) as main,
        AgentRuntime() as helper,
    ):

        async def middle(text: str) -> str:
            return (await main.run(leaf, TaskSpec(input=text))).unwrap()

        async def top(text: str) -> str:
            return (await helper.run(middle, TaskSpec(input=text))).unwrap()

        with anyio.fail_after(HANG_GUARD):
            result = await main.run(top, TaskSpec(input="a"))
    assert result.output == "A"


async def test_a_budget_given_as_middleware_lends_to_a_runtime_sharing_it() -> None:
    # The same budget, given to the calling runtime as a stage rather than as an option.
    budget = TokenBudget(limit=100, reserve_per_task=100)
    async with (
        AgentRuntime(middleware=[CostTrackingMiddleware(budget)]) as runtime,
        AgentRuntime(options=RuntimeOptions(token_budget=budget)) as helpers,
    ):

        async def agent(text: str, ctx: AgentContext) -> str:
            return (await helpers.run(leaf, TaskSpec(input=text))).unwrap()

        with anyio.fail_after(HANG_GUARD):
            result = await runtime.run(agent, TaskSpec(input="a"))
    assert result.output == "A"
