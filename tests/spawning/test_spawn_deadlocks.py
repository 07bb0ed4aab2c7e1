"""Calls made from inside a running task never wait on their own ancestor's budget.

``runtime.run`` inside an agent is that agent's child, so it never waits on the token
reservation its own parent holds; nor does a call from a stage, or from an agent into a
second runtime that shares the budget.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from murmur import AgentContext, AgentRuntime, CallNext, RuntimeOptions, TaskSpec, TokenBudget

pytestmark = pytest.mark.anyio

# These calls hang rather than fail: the guard turns the hang into a test failure.
HANG_GUARD = 5


async def moderator(text: str) -> bool:
    await anyio.lowlevel.checkpoint()
    return "bad" not in text


async def answer(text: str) -> str:
    await anyio.lowlevel.checkpoint()
    return text.upper()


class Guardrail:
    """A stage that asks a moderation agent about the input before the task runs."""

    side = "caller"

    async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
        if ctx.agent == "answer":
            verdict = await ctx.runtime.run(moderator, TaskSpec(input=ctx.task.input))
            if not verdict.unwrap():
                raise ValueError("refused by moderation")
        return await call_next(ctx)


async def test_a_stage_calling_the_runtime_inside_a_budgeted_task_does_not_hang() -> None:
    # One full reservation: the task holds it while its guardrail stage runs.
    budget = TokenBudget(limit=100, reserve_per_task=100)
    options = RuntimeOptions(token_budget=budget)
    async with AgentRuntime(options=options, middleware=[Guardrail()]) as runtime:
        with anyio.fail_after(HANG_GUARD):
            result = await runtime.run(answer, TaskSpec(input="a"))
    assert result.output == "A"


async def test_a_second_runtime_sharing_the_budget_called_from_an_agent_does_not_hang() -> None:
    # "Share one budget among runtimes on the same event loop" (TokenBudget's docs).
    budget = TokenBudget(limit=100, reserve_per_task=100)

    async with (
        AgentRuntime(options=RuntimeOptions(token_budget=budget)) as helpers,
        AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime,
    ):

        async def planner(text: str) -> str:
            checked = await helpers.run(moderator, TaskSpec(input=text))
            return f"{text}: {checked.unwrap()}"

        with anyio.fail_after(HANG_GUARD):
            result = await runtime.run(planner, TaskSpec(input="plan"))
    # Either a result or a clear refusal; never a silent hang on the parent's reservation.
    assert result.output == "plan: True" or result.error is not None
