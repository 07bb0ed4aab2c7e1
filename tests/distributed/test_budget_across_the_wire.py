"""A caller's TokenBudget holds when its pydantic-ai runs execute on a worker: the caller
admits and grants, the worker caps each run at its grant and reports the usage back."""

from __future__ import annotations

import uuid

import pytest
from pydantic_ai import RunContext

import murmur
from murmur import (
    AgentContext,
    AgentRuntime,
    BudgetExceededError,
    RuntimeOptions,
    TaskSpec,
    TokenBudget,
)
from murmur.distributed import BrokerTransport, Worker
from support import stepping_model

pytestmark = pytest.mark.anyio

URL = "memory://budget"


def step(ctx: RunContext[AgentContext]) -> str:
    return "stepped"


#: Calls its tool forever, 100 tokens a response: only its cap ends a run.
endless = murmur.Agent(name="endless", model=stepping_model(100, None), tools=(step,))
#: Two tool calls, then an answer: 300 tokens a run.
brief = murmur.Agent(name="brief", model=stepping_model(100, 2), tools=(step,))


async def test_runs_on_a_worker_stay_within_the_callers_budget() -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    budget = TokenBudget(limit=2_000)
    async with (
        Worker(URL, [endless], namespace=namespace, heartbeat_seconds=0) as worker,
        AgentRuntime(
            transport=BrokerTransport(URL, namespace=namespace),
            options=RuntimeOptions(token_budget=budget, timeout_seconds=30),
        ) as runtime,
    ):
        results = await runtime.gather(
            endless, [TaskSpec(input=str(i)) for i in range(8)], max_concurrency=4
        )
    assert worker.stats.per_agent["endless"] >= 1
    # Every run was cut at its grant on the worker. pydantic-ai checks a run's tokens after
    # each response, so a run ends at most one response (100 tokens) past its grant, as a
    # fixed reservation does in-process; the budget is exceeded by no more than that.
    assert all(isinstance(r.error, BudgetExceededError) for r in results)
    ran = sum(1 for r in results if r.usage.total_tokens)
    assert ran >= 1
    assert budget.used <= budget.limit + 100 * ran
    assert budget.used == sum(r.usage.total_tokens for r in results)
    assert budget.reserved == 0


async def test_runs_that_fit_finish_and_are_charged_exactly() -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    budget = TokenBudget(limit=100_000)
    async with (
        Worker(URL, [brief], namespace=namespace, heartbeat_seconds=0),
        AgentRuntime(
            transport=BrokerTransport(URL, namespace=namespace),
            options=RuntimeOptions(token_budget=budget, timeout_seconds=30),
        ) as runtime,
    ):
        results = await runtime.gather(brief, [TaskSpec(input=str(i)) for i in range(5)])
    assert [r.output for r in results] == ["answered after 2 steps"] * 5
    assert [r.usage.total_tokens for r in results] == [300] * 5
    assert budget.used == 1_500
    assert budget.reserved == 0
