"""A ``runtime.run`` made by a background job the agent started is charged in full.

An agent hands work to a task group its caller owns (a job queue, a server's background
tasks); the job calls ``runtime.run`` while the agent is still running. The call is the
agent's child (its context is current there); the agent may return and settle its token
reservation while the child still runs on what it borrowed from it.
Whatever the call is, every token it spends must reach the runtime's ``TokenBudget``.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from murmur import AgentContext, AgentRuntime, RuntimeOptions, TaskSpec, TokenBudget

pytestmark = pytest.mark.anyio


async def test_a_call_from_a_background_job_that_outlives_the_agent_is_charged() -> None:
    budget = TokenBudget(limit=100, reserve_per_task=100)
    job_running = anyio.Event()
    agent_done = anyio.Event()
    results: dict[str, Any] = {}

    async def job_agent(text: str, ctx: AgentContext) -> str:
        job_running.set()
        await agent_done.wait()
        ctx.report_usage(input_tokens=30)
        return text

    async with AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as jobs:

                async def job() -> None:
                    results["job"] = await runtime.run(job_agent, TaskSpec(input="j"))

                async def planner(text: str) -> str:
                    jobs.start_soon(job)  # outlives this agent
                    await job_running.wait()
                    return text

                results["planner"] = await runtime.run(planner, TaskSpec(input="p"))
                agent_done.set()
    assert results["planner"].is_ok()
    assert results["job"].is_ok()
    assert results["job"].usage.input_tokens == 30
    # Today: used == 0. The job borrowed from the planner's reservation; the planner settled
    # (and dropped its lender) before the job spent, so the job's 30 tokens went nowhere.
    assert (budget.used, budget.reserved) == (30, 0)
