"""TokenBudget and CostTrackingMiddleware: refusal, the overspend bound, waiting, children."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import RunContext
from pydantic_ai.exceptions import UsageLimitExceeded
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import murmur
from murmur import (
    AgentContext,
    AgentResult,
    AgentRuntime,
    BudgetExceededError,
    CallNext,
    EventType,
    RuntimeOptions,
    TaskSpec,
    TokenBudget,
    from_pydantic_ai,
)
from support import Barrier, Recorder, stepping_model, tokens

pytestmark = pytest.mark.anyio


class CapRecorder:
    """A user stage (inside cost tracking) that records each task's reservation."""

    def __init__(self) -> None:
        self.caps: dict[str, int | None] = {}

    async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
        self.caps.setdefault(ctx.task.task_id, ctx.token_cap)
        return await call_next(ctx)


def stepping_agent(
    per_response: int, tool_calls: int | None, barrier: Barrier | None = None
) -> PydanticAgent[None, str]:
    """A real pydantic-ai agent whose run makes ``tool_calls`` tool calls (None: forever)
    and then answers; every model response costs ``per_response`` tokens."""

    model = stepping_model(per_response, tool_calls, barrier)
    agent: PydanticAgent[None, str] = PydanticAgent(model, name="stepper")

    @agent.tool_plain
    def step() -> str:
        return "stepped"

    return agent


def spender(n: int) -> Callable[..., Any]:
    """A function agent that reports ``n`` tokens."""

    async def spend(value: Any, ctx: AgentContext) -> Any:
        await anyio.lowlevel.checkpoint()
        ctx.report_usage(input_tokens=n - n // 2, output_tokens=n // 2)
        return value

    return spend


# -- pre-check, post-charge, refusal -----------------------------------------------------------


async def test_refused_once_spent_with_the_event_before_the_error() -> None:
    budget = TokenBudget(limit=100)
    recorder = Recorder()
    calls: list[int] = []

    async def spend(value: int, ctx: AgentContext) -> int:
        calls.append(value)
        ctx.report_usage(input_tokens=60, output_tokens=40)
        return value

    options = RuntimeOptions(token_budget=budget)
    async with AgentRuntime(options=options, event_emitter=recorder) as runtime:
        first = await runtime.run(spend, TaskSpec(input=1))
        assert first.is_ok()
        assert (budget.used, budget.remaining, budget.exhausted) == (100, 0, True)
        refused = await runtime.run(spend, TaskSpec(input=2, task_id="refused"))
    assert isinstance(refused.error, BudgetExceededError)
    assert "100 of 100" in str(refused.error)
    assert refused.attempts == 0
    assert calls == [1]  # the refused task never reached its agent
    assert budget.used == 100
    assert budget.reserved == 0
    refused_events = [e for e in recorder.events if e.task_id == "refused"]
    kinds = [e.type for e in refused_events]
    # BUDGET_EXCEEDED fires before the error leaves the pipeline (TASK_FAILED reports it).
    assert kinds.index(EventType.BUDGET_EXCEEDED) < kinds.index(EventType.TASK_FAILED)
    (event,) = recorder.of(EventType.BUDGET_EXCEEDED)
    assert event.data == {"limit": 100, "used": 100, "reserved": 0}


async def test_used_reserved_and_remaining_are_readable_at_any_time() -> None:
    budget = TokenBudget(limit=10_000, reserve_per_task=700)
    seen: list[tuple[int, int, int, int | None]] = []

    async def look(value: int, ctx: AgentContext) -> int:
        seen.append((budget.used, budget.reserved, budget.remaining, ctx.token_cap))
        ctx.report_usage(input_tokens=30, output_tokens=12)
        return value

    async with AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime:
        assert (budget.used, budget.reserved, budget.remaining) == (0, 0, 10_000)
        await runtime.run(look, TaskSpec(input=1))
        await runtime.run(look, TaskSpec(input=2))
    assert seen == [(0, 700, 10_000, 700), (42, 700, 9_958, 700)]
    assert (budget.used, budget.reserved, budget.remaining) == (84, 0, 9_916)


async def test_real_pydantic_ai_usage_is_charged() -> None:
    budget = TokenBudget(limit=10_000)
    agent = from_pydantic_ai(stepping_agent(per_response=40, tool_calls=2))
    async with AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime:
        results = await runtime.gather(agent, [TaskSpec(input="q") for _ in range(3)])
    assert all(r.is_ok() for r in results)
    assert [r.usage.total_tokens for r in results] == [120, 120, 120]
    assert [r.usage.input_tokens for r in results] == [90, 90, 90]
    assert budget.used == 360
    assert budget.reserved == 0


# -- waiting, not refusing ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["function", "pydantic-ai"])
async def test_a_budget_worth_five_runs_runs_five_not_one(kind: str) -> None:
    budget = TokenBudget(limit=500)  # reserve_per_task defaults to the whole 500
    assert budget.reserve_per_task == 500
    agent: Any = spender(100) if kind == "function" else stepping_agent(50, tool_calls=1)
    async with AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime:
        results = await runtime.gather(agent, [TaskSpec(input=i) for i in range(8)])
    ok = [r for r in results if r.is_ok()]
    refused = [r for r in results if not r.is_ok()]
    assert len(ok) == 5
    assert len(refused) == 3
    assert all(isinstance(r.error, BudgetExceededError) for r in refused)
    assert all(r.attempts == 0 for r in refused)
    assert budget.used == 500
    assert budget.reserved == 0


async def test_a_task_waits_while_what_is_left_is_only_reserved() -> None:
    budget = TokenBudget(limit=500)
    release = anyio.Event()
    first_in = anyio.Event()
    entered: list[tuple[str, int | None]] = []
    results: dict[str, AgentResult[Any]] = {}

    async def agent(name: str, ctx: AgentContext) -> str:
        entered.append((name, ctx.token_cap))
        if name == "first":
            first_in.set()
            await release.wait()
        ctx.report_usage(output_tokens=100)
        return name

    async with AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime:

        async def run(name: str) -> None:
            results[name] = await runtime.run(agent, TaskSpec(input=name))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "first")
            await first_in.wait()
            tg.start_soon(run, "second")
            await anyio.wait_all_tasks_blocked()
            # Nothing is spent, all of it is reserved: the second task waits, unrefused.
            assert entered == [("first", 500)]
            assert (budget.used, budget.reserved, budget.remaining) == (0, 500, 500)
            assert "second" not in results
            release.set()
    assert results["first"].is_ok()
    assert results["second"].is_ok()
    assert entered == [("first", 500), ("second", 400)]
    assert budget.used == 200


async def test_reserve_and_settle_directly() -> None:
    budget = TokenBudget(limit=300, reserve_per_task=200)
    first = await budget.reserve()
    assert first == 200
    # 100 free is less than a share and someone holds a reservation: try says "wait".
    assert budget.try_reserve() is None
    budget.settle(first, 50)
    assert (budget.used, budget.reserved) == (50, 0)
    assert await budget.reserve() == 200
    budget.settle(200, 250)
    assert budget.used == 300
    with pytest.raises(BudgetExceededError):
        await budget.reserve()
    with pytest.raises(BudgetExceededError):
        budget.try_reserve()


# -- the overspend bound under concurrency ---------------------------------------------------------


@pytest.mark.parametrize(("limit", "expected_ok"), [(10_000, 50), (5_000, 25)])
async def test_fifty_concurrent_runs_covered_by_their_reservations_never_exceed_the_limit(
    limit: int, expected_ok: int
) -> None:
    budget = TokenBudget(limit=limit, reserve_per_task=200)
    barrier = Barrier(expected_ok)  # that many runs are in flight at once
    agent = from_pydantic_ai(stepping_agent(per_response=100, tool_calls=1, barrier=barrier))
    caps = CapRecorder()
    options = RuntimeOptions(token_budget=budget)
    async with AgentRuntime(options=options, middleware=[caps]) as runtime:
        results = await runtime.gather(
            agent, [TaskSpec(input=str(i)) for i in range(50)], max_concurrency=50
        )
    ok = [r for r in results if r.is_ok()]
    assert len(ok) == expected_ok
    assert barrier.arrived == expected_ok
    assert all(isinstance(r.error, BudgetExceededError) for r in results if not r.is_ok())
    assert all(r.usage.total_tokens == 200 for r in ok)
    assert set(caps.caps.values()) == {200}
    assert budget.used <= budget.limit
    assert budget.used == 200 * expected_ok
    assert budget.reserved == 0


async def test_fifty_concurrent_runs_that_outgrow_their_reservations_keep_the_bound() -> None:
    """The documented bound: used <= limit + sum(max(0, usage - reservation)), and each run
    overshoots its reservation by at most its last model response."""
    per_response = 100
    budget = TokenBudget(limit=50 * 250, reserve_per_task=250)
    barrier = Barrier(50)
    agent = from_pydantic_ai(stepping_agent(per_response, tool_calls=None, barrier=barrier))
    caps = CapRecorder()
    recorder = Recorder()
    options = RuntimeOptions(token_budget=budget, retry_max_attempts=3, retry_backoff_factor=0)
    async with AgentRuntime(options=options, middleware=[caps], event_emitter=recorder) as runtime:
        specs = [TaskSpec(input=str(i)) for i in range(50)]
        results = await runtime.gather(agent, specs, max_concurrency=50)
        late = await runtime.run(agent, TaskSpec(input="late"))
    assert barrier.arrived == 50  # all fifty were in flight at once
    assert all(isinstance(r.error, BudgetExceededError) for r in results)
    assert all(isinstance(r.error.__cause__, UsageLimitExceeded) for r in results)
    assert all(r.attempts == 1 for r in results)  # a cut-off is not retried
    overshoots = [
        r.usage.total_tokens - (caps.caps[s.task_id] or 0)
        for r, s in zip(results, specs, strict=True)
    ]
    assert all(0 < over <= per_response for over in overshoots)
    assert budget.used == sum(r.usage.total_tokens for r in results)
    assert budget.used <= budget.limit + sum(max(0, over) for over in overshoots)
    assert budget.used <= budget.limit + 50 * per_response
    # Spent: the next task is refused before any model call.
    assert isinstance(late.error, BudgetExceededError)
    assert late.attempts == 0
    assert len(recorder.of(EventType.BUDGET_EXCEEDED)) == 51


async def test_adaptive_reservations_keep_the_bound_exactly() -> None:
    """Ten runs that never finish, reserving by the rule: a warm-up run of the same agent
    spent 200, so each reserves max(floor 800, 1/64 of what is free) and together they take
    all of the budget. Each is cut off one response past its reservation, and the budget
    ends exactly at the documented bound."""
    per_response = 100
    budget = TokenBudget(limit=200 + 10 * 800)
    warm = from_pydantic_ai(stepping_agent(per_response, tool_calls=1))
    barrier = Barrier(10)
    forever = from_pydantic_ai(stepping_agent(per_response, tool_calls=None, barrier=barrier))
    assert warm.name == forever.name == "stepper"  # one agent, as far as the budget knows
    caps = CapRecorder()
    async with AgentRuntime(
        options=RuntimeOptions(token_budget=budget), middleware=[caps]
    ) as runtime:
        assert (await runtime.run(warm, TaskSpec(input="warm", task_id="warm"))).is_ok()
        specs = [TaskSpec(input=str(i), task_id=str(i)) for i in range(10)]
        results = await runtime.gather(forever, specs, max_concurrency=10)
    assert caps.caps["warm"] == 4096  # nothing known yet: min(limit, 4096)
    assert barrier.arrived == 10  # all ten in flight at once
    assert [caps.caps[s.task_id] for s in specs] == [800] * 10
    assert all(isinstance(r.error, BudgetExceededError) for r in results)
    overshoots = [r.usage.total_tokens - 800 for r in results]
    assert overshoots == [per_response] * 10  # one response past the reservation, no more
    assert budget.used == 200 + 10 * 900
    assert budget.used == budget.limit + sum(overshoots)  # the bound, met exactly
    assert budget.reserved == 0


@pytest.mark.parametrize(
    ("limit", "cap", "used"), [(1_000_000, 4096, 3_000), (1_200, 800, 1_100), (4_200, 800, 3_000)]
)
async def test_a_run_far_above_the_mean_grows_while_tokens_are_free(
    limit: int, cap: int, used: int
) -> None:
    """After a 200-token run, a run of 3000 tokens (15x the mean) gets the ceiling (4096)
    from a plentiful budget and finishes. From a scarce one it gets the floor (800) and
    grows while tokens are free: with 1000 left it is cut off one response past them, with
    4000 left it finishes."""
    budget = TokenBudget(limit=limit)
    caps = CapRecorder()
    async with AgentRuntime(
        options=RuntimeOptions(token_budget=budget), middleware=[caps]
    ) as runtime:
        small = from_pydantic_ai(stepping_agent(100, tool_calls=1))
        assert (await runtime.run(small, TaskSpec(input="q"))).is_ok()
        big = from_pydantic_ai(stepping_agent(100, tool_calls=29))
        result = await runtime.run(big, TaskSpec(input="q", task_id="big"))
    assert caps.caps["big"] == cap
    assert result.usage.total_tokens == used
    if used == 3_000:
        assert result.is_ok()
    else:
        assert isinstance(result.error, BudgetExceededError)
        assert "1000 tokens reserved" in str(result.error)  # grown from 800 to all of it
        assert budget.used == budget.limit + 100  # one response past its final reservation
    assert budget.reserved == 0


async def test_a_task_cancelled_from_outside_does_not_resize_reservations() -> None:
    budget = TokenBudget(limit=100_000)
    entered = anyio.Event()

    async def worker(value: int, ctx: AgentContext) -> int:
        ctx.report_usage(output_tokens=value)
        if value == 0:
            entered.set()
            await anyio.sleep_forever()
        return value

    async with AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime:
        await runtime.run(worker, TaskSpec(input=1_000))  # mean 1000: floor 4000
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(runtime.run, worker, TaskSpec(input=0))
                await entered.wait()
                scope.cancel()
    assert (budget.used, budget.reserved) == (1_000, 0)
    # 99_000 free, a 64th is 1546: the floor, still 4 x 1000, decides.
    assert budget.try_reserve("worker") == 4_000


# -- a run cut off by its cap -------------------------------------------------------------------


async def test_a_run_cut_off_by_its_cap_is_budget_exceeded() -> None:
    budget = TokenBudget(limit=100_000, reserve_per_task=250)
    recorder = Recorder()

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        response = ModelResponse(parts=[ToolCallPart("again", {})])
        response.usage = tokens(100)
        return response

    def again() -> str:
        return "more"

    looper = murmur.Agent(name="looper", model=FunctionModel(model), tools=(again,))
    options = RuntimeOptions(token_budget=budget, retry_max_attempts=3, retry_backoff_factor=0)
    async with AgentRuntime(options=options, event_emitter=recorder) as runtime:
        result = await runtime.run(looper, TaskSpec(input="go"))
    assert isinstance(result.error, BudgetExceededError)
    assert "250" in str(result.error)
    assert isinstance(result.error.__cause__, UsageLimitExceeded)
    assert result.attempts == 1
    assert result.usage.total_tokens == 300  # three responses: the third crossed the cap
    assert budget.used == 300
    (event,) = recorder.of(EventType.BUDGET_EXCEEDED)
    assert event.agent == "looper"
    kinds = recorder.types()
    assert kinds.index(EventType.BUDGET_EXCEEDED) < kinds.index(EventType.TASK_FAILED)


async def test_a_retry_is_capped_at_what_earlier_attempts_left() -> None:
    budget = TokenBudget(limit=100_000, reserve_per_task=250)
    calls = 0

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("dropped")
        response = ModelResponse(parts=[ToolCallPart("again", {})])
        response.usage = tokens(200 if calls == 1 else 100)
        return response

    def again() -> str:
        return "more"

    agent = murmur.Agent(name="retried", model=FunctionModel(model), tools=(again,))
    options = RuntimeOptions(token_budget=budget, retry_max_attempts=3, retry_backoff_factor=0)
    async with AgentRuntime(options=options) as runtime:
        result = await runtime.run(agent, TaskSpec(input="go"))
    # Attempt 1 spent 200 of the 250 reserved, then failed; attempt 2 may spend only 50.
    assert result.attempts == 2
    assert isinstance(result.error, BudgetExceededError)
    assert result.usage.total_tokens == 300
    assert calls == 3
    assert budget.used == 300


# -- spawned children share the budget ------------------------------------------------------------


async def test_a_child_shares_its_parents_budget_when_the_parent_holds_all_of_it() -> None:
    budget = TokenBudget(limit=1000)  # the parent's reservation is the whole budget

    async def child(value: int, ctx: AgentContext) -> int:
        assert ctx.token_cap is not None
        ctx.report_usage(input_tokens=10, output_tokens=5)
        return value * 2

    async def parent(value: int, ctx: AgentContext) -> int:
        result = await ctx.run(child, TaskSpec(input=value))
        ctx.report_usage(input_tokens=1)
        return int(result.unwrap()) + 1

    async with AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime:
        result = await runtime.run(parent, TaskSpec(input=3))
    assert result.output == 7
    assert result.usage.total_tokens == 1  # the parent's own usage
    assert budget.used == 16  # the parent's and the child's
    assert budget.reserved == 0


async def test_children_borrow_from_their_parent_and_are_refused_once_it_is_spent() -> None:
    budget = TokenBudget(limit=300)
    recorder = Recorder()

    async def child(value: int, ctx: AgentContext) -> int:
        await anyio.lowlevel.checkpoint()
        ctx.report_usage(output_tokens=100)
        return value

    async def parent(value: int, ctx: AgentContext) -> list[str]:
        results = await ctx.gather(child, [TaskSpec(input=i) for i in range(4)])
        return [type(r.error).__name__ if r.error else "ok" for r in results]

    options = RuntimeOptions(token_budget=budget)
    async with AgentRuntime(options=options, event_emitter=recorder) as runtime:
        result = await runtime.run(parent, TaskSpec(input=0))
    assert sorted(result.unwrap()) == ["BudgetExceededError", "ok", "ok", "ok"]
    assert budget.used == 300
    assert budget.reserved == 0
    (event,) = recorder.of(EventType.BUDGET_EXCEEDED)
    assert event.depth == 1


async def test_children_take_their_own_share_when_the_budget_has_room() -> None:
    budget = TokenBudget(limit=10_000, reserve_per_task=1000)
    caps: list[tuple[int, int | None]] = []

    async def child(value: int, ctx: AgentContext) -> int:
        caps.append((ctx.depth, ctx.token_cap))
        ctx.report_usage(output_tokens=10)
        return value

    async def parent(value: int, ctx: AgentContext) -> int:
        caps.append((ctx.depth, ctx.token_cap))
        results = await ctx.gather(child, [TaskSpec(input=i) for i in range(3)])
        return sum(r.unwrap() for r in results)

    async with AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime:
        assert (await runtime.run(parent, TaskSpec(input=0))).output == 3
    assert caps == [(0, 1000), (1, 1000), (1, 1000), (1, 1000)]
    assert budget.used == 30


async def test_deep_and_concurrent_spawn_trees_do_not_deadlock() -> None:
    budget = TokenBudget(limit=1000, reserve_per_task=500)

    async def node(depth: int, ctx: AgentContext) -> int:
        ctx.report_usage(output_tokens=10)
        if depth == 0:
            return 1
        results = await ctx.gather(node, [TaskSpec(input=depth - 1) for _ in range(2)])
        return 1 + sum(r.unwrap() for r in results)

    async with AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime:
        results = await runtime.gather(node, [TaskSpec(input=3) for _ in range(2)])
    # Each tree has 1 + 2 + 4 + 8 = 15 nodes, 10 tokens each.
    assert [r.output for r in results] == [15, 15]
    assert budget.used == 300
    assert budget.reserved == 0


async def test_a_pydantic_ai_tool_spawns_children_inside_the_budget() -> None:
    """murmur.Agent passes the AgentContext as deps: a tool spawns with ``ctx.deps.run``."""
    budget = TokenBudget(limit=1000)
    child = from_pydantic_ai(stepping_agent(per_response=25, tool_calls=1), name="child")

    async def delegate(ctx: RunContext[AgentContext], question: str) -> str:
        result = await ctx.deps.run(child, TaskSpec(input=question))
        return str(result.unwrap())

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1].parts[-1]
        if last.part_kind == "tool-return":
            response = ModelResponse(parts=[TextPart(f"child said: {last.content}")])
        else:
            response = ModelResponse(parts=[ToolCallPart("delegate", {"question": "why"})])
        response.usage = tokens(10)
        return response

    parent = murmur.Agent(name="parent", model=FunctionModel(model), tools=(delegate,))
    async with AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime:
        result = await runtime.run(parent, TaskSpec(input="go"))
    assert result.output == "child said: answered after 1 steps"
    assert result.usage.total_tokens == 20
    assert budget.used == 20 + 50
    assert budget.reserved == 0


def delegating_parent(
    child: Any, *, first: int, final: int, seen: list[AgentResult[Any]]
) -> murmur.Agent:
    """A pydantic-ai parent whose first response (``first`` tokens) calls a tool that runs
    ``child``; its answer after the tool costs ``final`` tokens."""

    async def delegate(ctx: RunContext[AgentContext]) -> str:
        result = await ctx.deps.run(child, TaskSpec(input="work"))
        seen.append(result)
        return str(result.output)

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1].parts[-1]
        if last.part_kind == "tool-return":
            response = ModelResponse(parts=[TextPart(f"child said: {last.content}")])
            response.usage = tokens(final)
        else:
            response = ModelResponse(parts=[ToolCallPart("delegate", {})])
            response.usage = tokens(first)
        return response

    return murmur.Agent(name="parent", model=FunctionModel(model), tools=(delegate,))


async def test_a_pydantic_ai_parent_and_its_borrowing_child_share_one_reservation() -> None:
    """The parent's run and the child it spawns from a tool draw on one allowance.

    Limit 100, all of it the parent's reservation. The parent's first response costs 60,
    then its tool spawns a child that would spend 80 (four responses of 20). The child may
    borrow only the 40 the parent's run has left; it is cut off after one response over,
    and the parent's run then has nothing left. Every run stays within its share plus its
    last response: never the ~2x of two separately capped runs (60 + 80 + 5 = 145).
    """
    budget = TokenBudget(limit=100, reserve_per_task=100)
    child = from_pydantic_ai(stepping_agent(per_response=20, tool_calls=3), name="child")
    seen: list[AgentResult[Any]] = []
    parent = delegating_parent(child, first=60, final=5, seen=seen)
    async with AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime:
        result = await runtime.run(parent, TaskSpec(input="go"))
    (borrowed,) = seen
    assert isinstance(borrowed.error, BudgetExceededError)  # capped at the 40 left
    assert borrowed.usage.total_tokens == 60  # 40, plus the response that went over
    # Nothing is left for the parent: pydantic-ai stops its run before the next request.
    assert isinstance(result.error, BudgetExceededError)
    assert result.usage.total_tokens == 60
    # Within the limit plus the child's one response over, and no more.
    assert budget.used == 120
    assert budget.used <= budget.limit + 20
    assert budget.reserved == 0


async def test_borrowing_leaves_the_parent_what_its_child_did_not_spend() -> None:
    budget = TokenBudget(limit=100, reserve_per_task=100)
    child = from_pydantic_ai(stepping_agent(per_response=10, tool_calls=1), name="child")
    seen: list[AgentResult[Any]] = []
    # 40 (the parent) + 20 (the child) + 30 (the parent's answer) fits in 100.
    parent = delegating_parent(child, first=40, final=30, seen=seen)
    async with AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime:
        result = await runtime.run(parent, TaskSpec(input="go"))
    assert result.unwrap() == "child said: answered after 1 steps"
    assert seen[0].usage.total_tokens == 20
    assert budget.used == 40 + 20 + 30
    assert budget.reserved == 0


async def test_charges_from_other_threads_are_never_lost_while_tasks_settle() -> None:
    """Tasks reserve and settle lock-free on the loop; charge() from threads keeps its count."""
    budget = TokenBudget(limit=10**9, reserve_per_task=100)
    threads, charges_each = 4, 2_000

    async def agent(value: int, ctx: AgentContext) -> int:
        ctx.report_usage(input_tokens=3, output_tokens=7)
        await anyio.lowlevel.checkpoint()  # let the charging threads interleave
        return value

    def charge_many() -> None:
        for _ in range(charges_each):
            budget.charge(1)

    async with (
        AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime,
        anyio.create_task_group() as tg,
    ):
        for _ in range(threads):
            tg.start_soon(anyio.to_thread.run_sync, charge_many)
        results = await runtime.gather(agent, [TaskSpec(input=i) for i in range(500)])
    assert all(r.error is None for r in results)
    assert budget.used == threads * charges_each + 500 * 10
    assert budget.reserved == 0
