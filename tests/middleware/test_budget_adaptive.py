"""TokenBudget's adaptive reservation: the concurrency cap is the limit while tokens are
plentiful, and a task's share follows what its agent really spends."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from murmur import (
    AgentContext,
    AgentResult,
    AgentRuntime,
    RuntimeOptions,
    TaskSpec,
    TokenBudget,
)
from murmur.events import MultiEventEmitter

pytestmark = pytest.mark.anyio


class Gated:
    """A function agent (``gated.agent``) that holds each task until it is let go, then
    reports ``spend`` tokens; counts the tasks in flight and records their reservations."""

    def __init__(self, spend: int) -> None:
        self.in_flight = 0
        self.peak = 0
        self.caps: list[int | None] = []
        self.let_go_all = False
        self._gates: dict[int, anyio.Event] = {}

        async def gated(task: int, ctx: AgentContext) -> int:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.caps.append(ctx.token_cap)
            if not self.let_go_all:
                await self.gate(task).wait()
            self.in_flight -= 1
            ctx.report_usage(output_tokens=spend)
            return task

        self.agent = gated

    def gate(self, task: int) -> anyio.Event:
        return self._gates.setdefault(task, anyio.Event())

    def open_all(self) -> None:
        self.let_go_all = True
        for event in self._gates.values():
            event.set()


async def run_batch(
    budget: TokenBudget, agent: Gated, tasks: int, cap: int, *, warm_up: bool = False
) -> tuple[list[AgentResult[Any]], int, int]:
    """Run ``tasks`` tasks of ``agent``: the first wave (what the budget admits at the
    start) is let go once it is in, so the agent's spend becomes known; the rest once every
    task that can get in next is in. Returns the results and the tasks in flight at those
    two points (each measured when nothing can move any more)."""
    results: list[AgentResult[Any]] = []
    options = RuntimeOptions(token_budget=budget)
    async with AgentRuntime(options=options, event_emitter=MultiEventEmitter([])) as runtime:
        if warm_up:
            agent.gate(-1).set()
            await runtime.run(agent.agent, TaskSpec(input=-1))

        async def batch() -> None:
            specs = [TaskSpec(input=i) for i in range(tasks)]
            results.extend(await runtime.gather(agent.agent, specs, max_concurrency=cap))

        async with anyio.create_task_group() as tg:
            tg.start_soon(batch)
            await anyio.wait_all_tasks_blocked()
            first_wave = agent.in_flight
            for task in range(first_wave):
                agent.gate(task).set()
            await anyio.wait_all_tasks_blocked()
            after = agent.in_flight
            agent.open_all()
    return results, first_wave, after


async def test_the_readmes_budget_runs_at_the_concurrency_cap() -> None:
    """``TokenBudget(limit=200_000)``, tasks of 300 tokens, cap 100: the old fixed 4096 per
    task ran 48 at a time for the whole run. Now the first wave reserves half of that (96 in
    flight), and once tasks have settled the batch runs 100 at a time."""
    budget = TokenBudget(limit=200_000)
    agent = Gated(spend=300)
    results, first_wave, after = await run_batch(budget, agent, tasks=300, cap=100)
    assert first_wave == 96  # nothing known yet: 4096 for the first, 2048 for the others
    assert after == 100
    assert agent.peak == 100
    assert all(r.is_ok() for r in results)
    assert (budget.used, budget.reserved) == (300 * 300, 0)


async def test_a_cold_batch_with_ten_times_what_it_needs_reaches_the_cap() -> None:
    """The issue's case: 100 tasks of 300 tokens, ``limit=300_000`` (ten times their
    30_000), cap 100, nothing known about the agent: the fixed first guess of 4096 admitted
    73. Now the first task reserves 4096 and the others, which start while it holds its
    reservation, half of that: all 100 run at once."""
    budget = TokenBudget(limit=300_000)
    agent = Gated(spend=300)
    results, first_wave, _ = await run_batch(budget, agent, tasks=100, cap=100)
    assert first_wave == 100
    assert agent.caps == [4096] + [2048] * 99
    assert all(r.is_ok() for r in results)
    assert (budget.used, budget.reserved) == (100 * 300, 0)


async def test_a_budget_ten_times_what_the_batch_needs_reaches_the_cap() -> None:
    """100 tasks of 300 tokens under 10x their 30_000: all 100 in flight at once, once the
    agent's spend is known (here from an earlier task)."""
    budget = TokenBudget(limit=10 * 100 * 300 + 300)
    agent = Gated(spend=300)
    results, first_wave, _ = await run_batch(budget, agent, tasks=100, cap=100, warm_up=True)
    assert first_wave == 100
    assert all(r.is_ok() for r in results)
    # Each got at least four times the mean, and no more than 1/64 of what was free.
    assert min(c or 0 for c in agent.caps[1:]) >= 1_200
    assert budget.used == 101 * 300


async def test_a_small_budget_runs_several_tasks_at_once() -> None:
    """``limit=1000`` with tasks of 50 tokens ran one task at a time; after the first it runs
    four (each reserving 4 x 50 = 200), and every task the budget pays for runs."""
    budget = TokenBudget(limit=1_000)
    agent = Gated(spend=50)
    results, first_wave, after = await run_batch(budget, agent, tasks=30, cap=10)
    assert first_wave == 1  # the first task holds all 1000 until its spend is known
    assert after == 4
    assert [r.is_ok() for r in results] == [True] * 20 + [False] * 10
    assert (budget.used, budget.reserved) == (1_000, 0)


# -- the rule, exactly ------------------------------------------------------------------------


def test_an_agent_nobody_has_seen_reserves_the_default_alone() -> None:
    budget = TokenBudget(limit=1_000_000)
    assert budget.reserve_per_task == 4096
    assert budget.try_reserve("new") == 4096
    assert TokenBudget(limit=1_000).try_reserve("new") == 1_000


def test_an_agent_nobody_has_seen_reserves_half_the_default_beside_others() -> None:
    """Until an agent's spend is known, a task that starts while others hold reservations
    reserves ``reserve_per_task // 2``, and waits if that much is not free."""
    budget = TokenBudget(limit=10_000)
    grants = [budget.try_reserve("new") for _ in range(3)]
    assert grants == [4096, 2048, 2048]
    assert budget.try_reserve("new") is None  # 1808 free: wait
    # An agent whose spend is known gets a 64th of what is free instead.
    known = TokenBudget(limit=100_000)
    known.settle(known.try_reserve("k") or 0, 100, "k")  # floor 400, ceiling 4096
    assert known.try_reserve("k") == 99_900 >> 6  # 1560
    assert known.try_reserve("new") == 2048


def test_the_share_is_a_64th_of_what_is_free_between_floor_and_ceiling() -> None:
    budget = TokenBudget(limit=1_000_000)
    first = budget.try_reserve("a")
    assert first == 4096
    budget.settle(first, 300, "a")  # mean 300: floor 1200, ceiling max(2400, 4096)
    # Plentiful: 999_700 free, a 64th is 15_620: capped at the ceiling.
    assert budget.try_reserve("a") == 4096
    # Another agent is sized by its own spend: nothing known, and a task holds a share.
    assert budget.try_reserve("b") == 2048
    scarce = TokenBudget(limit=100_300)
    scarce.settle(scarce.try_reserve("a") or 0, 300, "a")
    assert scarce.try_reserve("a") == 100_000 // 64  # 1562, between 1200 and 4096
    assert scarce.try_reserve("a") == (100_000 - 1_562) // 64  # less free, a smaller share
    tight = TokenBudget(limit=3_000)
    tight.settle(tight.try_reserve("a") or 0, 300, "a")  # 2700 free; 2700 // 64 < floor
    assert tight.try_reserve("a") == 1_200
    assert tight.try_reserve("a") == 1_200
    assert tight.try_reserve("a") is None  # 300 free, less than the floor: wait


def test_the_floor_follows_the_mean_rounded_up() -> None:
    budget = TokenBudget(limit=20_301)
    for spend in (100, 201, 0):  # mean 100.33...: floor ceil(401.33) = 402
        budget.settle(budget.try_reserve("a") or 0, spend, "a")
    assert budget.try_reserve("a") == 402  # 20_000 free: a 64th, 312, is below the floor


def test_an_agent_that_reports_nothing_reserves_one_token() -> None:
    """Function agents that report no usage are never held back by the budget."""
    budget = TokenBudget(limit=100)
    budget.settle(budget.try_reserve("quiet") or 0, 0, "quiet")
    grants = [budget.try_reserve("quiet") for _ in range(100)]
    assert grants == [1] * 100
    assert budget.try_reserve("quiet") is None


def test_an_explicit_reserve_per_task_is_fixed() -> None:
    budget = TokenBudget(limit=1_000_000, reserve_per_task=700)
    for _ in range(5):
        budget.settle(budget.try_reserve("a") or 0, 10, "a")
    assert [budget.try_reserve("a") for _ in range(3)] == [700, 700, 700]


def test_the_last_task_runs_with_what_is_left() -> None:
    budget = TokenBudget(limit=2_000)
    budget.settle(budget.try_reserve("a") or 0, 1_700, "a")  # floor 6800 > 300 free
    assert budget.try_reserve("a") == 300  # nobody holds anything: all that is left
