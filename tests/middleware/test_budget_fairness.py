"""TokenBudget admits tasks first come, first served, and refuses only a spent budget."""

from __future__ import annotations

from typing import Any

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
from murmur.events import MultiEventEmitter

pytestmark = pytest.mark.anyio


def pattern(results: list[Any]) -> str:
    """``o`` for a task that ran, ``x`` for one refused, in input order."""
    return "".join("o" if r.is_ok() else "x" for r in results)


async def test_a_batch_is_admitted_in_input_order_and_refused_only_at_its_tail() -> None:
    """The issue's case: limit 2000, 60 tasks of 40 tokens, cap 10. The budget pays for
    exactly 50; those are the first 50, and only the last 10 are refused."""
    budget = TokenBudget(limit=2_000)

    async def spend(value: int, ctx: AgentContext) -> int:
        await anyio.lowlevel.checkpoint()
        ctx.report_usage(input_tokens=30, output_tokens=10)
        return value

    options = RuntimeOptions(token_budget=budget)
    async with AgentRuntime(options=options, event_emitter=MultiEventEmitter([])) as runtime:
        results = await runtime.gather(
            spend, [TaskSpec(input=i) for i in range(60)], max_concurrency=10
        )
    assert pattern(results) == "o" * 50 + "x" * 10
    assert all(isinstance(r.error, BudgetExceededError) for r in results[50:])
    assert all(r.attempts == 0 for r in results[50:])
    assert (budget.used, budget.reserved) == (2_000, 0)


@pytest.mark.parametrize("cap", [3, 10, 60])
async def test_no_refused_task_precedes_a_task_that_ran(cap: int) -> None:
    """Uneven spends leave a remainder smaller than a task: whatever the concurrency, the
    tasks that ran are a prefix of the batch, and refusal comes only once all is spent."""
    budget = TokenBudget(limit=5_000)
    spends = [37 + (i * 53) % 211 for i in range(80)]

    async def spend(value: int, ctx: AgentContext) -> int:
        await anyio.lowlevel.checkpoint()
        ctx.report_usage(output_tokens=spends[value])
        return value

    options = RuntimeOptions(token_budget=budget)
    async with AgentRuntime(options=options, event_emitter=MultiEventEmitter([])) as runtime:
        results = await runtime.gather(
            spend, [TaskSpec(input=i) for i in range(80)], max_concurrency=cap
        )
    ran = pattern(results).count("o")
    assert pattern(results) == "o" * ran + "x" * (80 - ran)
    assert 0 < ran < 80
    # Each refused task found the budget spent: function agents report after the fact, so the
    # last ones may overshoot, but nothing was refused while tokens were left.
    assert budget.used >= budget.limit
    assert budget.used == sum(spends[:ran])
    assert budget.reserved == 0


async def test_a_waiting_task_is_served_before_a_newcomer() -> None:
    """Tokens released by a settling task go to the longest-waiting task, never to a task
    that asks later (even one that would fit)."""
    budget = TokenBudget(limit=1_000, reserve_per_task=400)
    first = await budget.reserve()
    second = await budget.reserve()
    assert (first, second) == (400, 400)
    order: list[str] = []

    async def wait_for(name: str) -> None:
        granted = await budget.reserve()
        order.append(name)
        budget.settle(granted, 0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait_for, "third")
        await anyio.wait_all_tasks_blocked()
        # 200 free, less than a share: "third" waits; a newcomer may not pass it.
        assert budget.try_reserve() is None
        tg.start_soon(wait_for, "fourth")
        await anyio.wait_all_tasks_blocked()
        assert order == []
        budget.settle(first, 100)  # 500 free: handed to "third" at once ...
        assert budget.reserved == 800
        # ... so a newcomer asking before "third" has even resumed finds nothing to take.
        assert budget.try_reserve() is None
        await anyio.wait_all_tasks_blocked()
        assert order == ["third", "fourth"]
    budget.settle(second, 100)
    assert (budget.used, budget.reserved) == (200, 0)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    budget = TokenBudget(limit=1_000, reserve_per_task=600)
    held = await budget.reserve()
    granted: dict[str, int] = {}
    scope = anyio.CancelScope()

    async def wait(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            granted[name] = await budget.reserve()

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, "cancelled", scope)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(wait, "behind it", anyio.CancelScope())
        await anyio.wait_all_tasks_blocked()
        scope.cancel()
        await anyio.wait_all_tasks_blocked()
        budget.settle(held, 100)  # 900 free: the next in line is served, not stuck
    assert granted == {"behind it": 600}
    assert (budget.used, budget.reserved) == (100, 600)
