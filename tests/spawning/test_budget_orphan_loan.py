"""A borrower that outlives its lender keeps its loan reserved until it settles."""

from __future__ import annotations

import anyio
import pytest

from murmur import (
    AgentContext,
    AgentRuntime,
    BudgetExceededError,
    RuntimeOptions,
    TaskSpec,
    TokenBudget,
)

pytestmark = pytest.mark.anyio


async def test_tokens_lent_to_a_borrower_outliving_its_lender_stay_reserved() -> None:
    budget = TokenBudget(limit=100, reserve_per_task=100)
    started = anyio.Event()
    release = anyio.Event()
    caps: list[int | None] = []

    async def slow(text: str, ctx: AgentContext) -> str:
        caps.append(ctx.token_cap)  # what it was lent: it may spend that much
        started.set()
        await release.wait()
        ctx.report_usage(input_tokens=ctx.token_cap or 0)  # spends no more than its loan
        return text

    async def spender(text: str, ctx: AgentContext) -> str:
        ctx.report_usage(input_tokens=ctx.token_cap or 0)  # spends no more than granted
        return text

    async with (
        AgentRuntime(options=RuntimeOptions(token_budget=budget)) as main,
        AgentRuntime(options=RuntimeOptions(token_budget=budget)) as helpers,
        anyio.create_task_group() as elsewhere,
    ):

        async def handing_off(text: str, ctx: AgentContext) -> str:
            ctx.report_usage(input_tokens=1)
            # A job handed elsewhere: it borrows from this task and outlives it.
            elsewhere.start_soon(helpers.run, slow, TaskSpec(input=text))
            await started.wait()
            return text

        assert (await main.run(handing_off, TaskSpec(input="a"))).error is None
        # The loan is still out: the budget must not grant those tokens again meanwhile,
        # nor refuse a newcomer for it: the newcomer waits until the borrower settles.
        assert budget.reserved == 99
        results: list[object] = []

        async def spend() -> None:
            results.append(await main.run(spender, TaskSpec(input="b")))

        async with anyio.create_task_group() as tg:
            tg.start_soon(spend)
            await anyio.wait_all_tasks_blocked()
            assert results == []  # waiting, not refused
            release.set()
        (result,) = results
        # The borrower spent its loan in full: the budget is spent, so the newcomer that
        # waited is refused now, having been granted nothing the borrower held.
        assert isinstance(result.error, BudgetExceededError)  # type: ignore[attr-defined]
    # No task spent past what it was granted (1 + 99 lent + 99 granted after), so the
    # documented bound is the limit itself.
    assert budget.used <= budget.limit, budget
