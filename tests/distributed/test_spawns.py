"""Children spawned on a worker go back through the broker, within the caller's limits."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from murmur import (
    AgentContext,
    AgentGroup,
    AgentRuntime,
    BudgetExceededError,
    Edge,
    EventType,
    RuntimeOptions,
    SpawnDepthExceededError,
    TaskSpec,
    TokenBudget,
)
from murmur.distributed._transport import BrokerTransport
from murmur.distributed._worker import Worker
from support import Recorder

pytestmark = pytest.mark.anyio

URL = "memory://spawns"


async def leaf(text: str, ctx: AgentContext) -> str:
    ctx.report_usage(input_tokens=10, output_tokens=5)
    return text.upper()


async def fan_out(text: str, ctx: AgentContext) -> str:
    results = await ctx.gather(leaf, [TaskSpec(input=f"{text}{i}") for i in range(3)])
    return ",".join(r.output if r.is_ok() else type(r.error).__name__ for r in results)


async def nested(text: str, ctx: AgentContext) -> str:
    result = await ctx.run(fan_out, TaskSpec(input=text))
    return result.output if result.is_ok() else type(result.error).__name__


async def spender(text: str, ctx: AgentContext) -> str:
    ctx.report_usage(input_tokens=ctx.token_cap or 0)  # all it was granted
    result = await ctx.run(leaf, TaskSpec(input=text))
    return "ok" if result.is_ok() else type(result.error).__name__


async def first(text: str) -> str:
    return text + "-1"


async def second(text: str) -> str:
    return text + "-2"


async def third(text: str) -> str:
    return text + "-3"


async def grouped(text: str, ctx: AgentContext) -> str:
    group = AgentGroup(
        name="chain",
        topology={first: Edge(to=(second,)), second: Edge(to=(third,)), third: Edge.terminal()},
    )
    result = await ctx.run_group(group, TaskSpec(input=text))
    return str(result.output)


AGENTS = [leaf, fan_out, nested, spender, first, second, third, grouped]


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    async with Worker(URL, AGENTS, concurrency=8, namespace=namespace, heartbeat_seconds=0) as w:
        yield w


def runtime_for(worker: Worker, **options: object) -> AgentRuntime:
    recorder = Recorder()
    runtime = AgentRuntime(
        transport=BrokerTransport(URL, namespace=worker.namespace),
        options=RuntimeOptions(timeout_seconds=30, **options),  # type: ignore[arg-type]
        event_emitter=recorder,
    )
    runtime.recorder = recorder  # type: ignore[attr-defined]
    return runtime


async def test_children_run_on_the_worker_through_the_broker(worker: Worker) -> None:
    async with runtime_for(worker) as runtime:
        result = await runtime.run(fan_out, TaskSpec(input="a"))
    assert result.output == "A0,A1,A2"
    # The parent and its three children each went through the broker to the worker.
    assert worker.stats.per_agent == {"fan_out": 1, "leaf": 3}


async def test_children_events_reach_the_caller_from_the_worker(worker: Worker) -> None:
    async with runtime_for(worker) as runtime:
        await runtime.run(fan_out, TaskSpec(input="a"))
    events = runtime.recorder.events  # type: ignore[attr-defined]
    children = [e for e in events if e.agent == "leaf"]
    assert [e.type for e in children if e.type is EventType.TASK_SUCCEEDED] == [
        EventType.TASK_SUCCEEDED
    ] * 3
    assert all(e.depth == 1 and e.data["worker"] == worker.name for e in children)
    parent_id = next(e.task_id for e in events if e.agent == "fan_out")
    assert {e.parent_task_id for e in children if e.task_id} == {parent_id}
    assert len({e.trace_id for e in events}) == 1


async def test_max_spawn_depth_holds_on_the_worker(worker: Worker) -> None:
    async with runtime_for(worker, max_spawn_depth=1) as runtime:
        result = await runtime.run(nested, TaskSpec(input="b"))
    # nested (0) -> fan_out (1) -> leaf (2): refused on the worker, as in-process.
    assert result.is_ok()
    assert "leaf" not in worker.stats.per_agent
    refused = runtime.recorder.of(EventType.DEPTH_LIMIT_EXCEEDED)  # type: ignore[attr-defined]
    assert len(refused) == 3
    assert {e.depth for e in refused} == {2}
    recorder: Recorder = runtime.recorder  # type: ignore[attr-defined]
    failed = [e for e in recorder.of(EventType.TASK_FAILED) if e.agent == "leaf"]
    assert {e.error.type for e in failed if e.error} == {SpawnDepthExceededError.__name__}


async def test_childrens_spend_counts_in_the_callers_budget(worker: Worker) -> None:
    budget = TokenBudget(limit=10_000)
    async with runtime_for(worker, token_budget=budget) as runtime:
        result = await runtime.run(fan_out, TaskSpec(input="c"))
    # The parent's result carries its children's spend: the caller's budget settles it.
    assert result.usage.total_tokens == 45
    assert budget.used == 45


async def test_a_child_cannot_spend_past_its_parents_grant(worker: Worker) -> None:
    budget = TokenBudget(limit=10_000)
    # spender spends all the budget granted it, then spawns: nothing left for the child.
    async with runtime_for(worker, token_budget=budget) as runtime:
        result = await runtime.run(spender, TaskSpec(input="d"))
    assert result.output == BudgetExceededError.__name__
    assert "leaf" not in worker.stats.per_agent


async def test_a_group_runs_from_a_worker(worker: Worker) -> None:
    async with runtime_for(worker) as runtime:
        result = await runtime.run(grouped, TaskSpec(input="g"))
    assert result.output == "g-1-2-3"
    assert {name: worker.stats.per_agent[name] for name in ("first", "second", "third")} == {
        "first": 1,
        "second": 1,
        "third": 1,
    }
