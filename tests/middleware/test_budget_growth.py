"""TokenBudget on a cold start: pydantic-ai runs start on a modest share and grow their
reservation while tokens are free, instead of being cut off at their first share."""

from __future__ import annotations

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
    RuntimeOptions,
    TaskSpec,
    TokenBudget,
    from_pydantic_ai,
)
from murmur.events import MultiEventEmitter
from support import Barrier, stepping_model, tokens

pytestmark = pytest.mark.anyio


def stepper(
    per_response: int, steps: int | None, *, barrier: Barrier | None = None
) -> tuple[murmur.Agent, list[int | None]]:
    """A pydantic-ai agent (murmur.Agent: its tools get the AgentContext as deps) that calls
    its ``step`` tool ``steps`` times (None: forever) and then answers; every model response
    costs ``per_response`` tokens. Also returns the list in which the tool records the
    task's reservation each time it runs."""
    caps: list[int | None] = []

    def step(ctx: RunContext[AgentContext]) -> str:
        caps.append(ctx.deps.token_cap)
        return "stepped"

    model = stepping_model(per_response, steps, barrier)
    return murmur.Agent(name="stepper", model=model, tools=(step,)), caps


class HoldAfterReserving:
    """A caller-side stage (inside cost tracking): each task that reaches it holds a
    reservation; it counts them and holds tasks named in ``hold`` until they are let go."""

    side = "caller"

    def __init__(self, hold: set[str] | None = None) -> None:
        self.entered = 0
        self.caps: dict[str, int | None] = {}
        self.hold = hold
        self.gates: dict[str, anyio.Event] = {}

    async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
        self.entered += 1
        self.caps[ctx.task.task_id] = ctx.token_cap
        if self.hold is None or ctx.task.task_id in self.hold:
            await self.gates.setdefault(ctx.task.task_id, anyio.Event()).wait()
        return await call_next(ctx)

    def let_go(self) -> None:
        self.hold = set()
        for gate in self.gates.values():
            gate.set()


# -- a cold batch reaches the concurrency cap ---------------------------------------------------


async def test_a_cold_batch_of_pydantic_ai_runs_with_ten_times_what_it_needs_runs_at_the_cap() -> (
    None
):
    """The issue's case, for real pydantic-ai runs: 100 runs of 300 tokens (three responses
    of 100), a budget of 300_000 (ten times what they need), max_concurrency=100, and
    nothing known about the agent yet. The fixed first guess of 4096 admitted 73; now all
    100 hold a reservation at once, then all 100 are inside their model runs at once, and
    every run finishes on its first share."""
    budget = TokenBudget(limit=300_000)
    barrier = Barrier(100)
    agent, caps = stepper(100, steps=2, barrier=barrier)
    stage = HoldAfterReserving()
    results: list[AgentResult[Any]] = []
    options = RuntimeOptions(token_budget=budget)
    async with AgentRuntime(
        options=options, middleware=[stage], event_emitter=MultiEventEmitter([])
    ) as runtime:

        async def batch() -> None:
            specs = [TaskSpec(input=str(i), task_id=str(i)) for i in range(100)]
            results.extend(await runtime.gather(agent, specs, max_concurrency=100))

        async with anyio.create_task_group() as tg:
            tg.start_soon(batch)
            await anyio.wait_all_tasks_blocked()
            assert stage.entered == 100  # admitted together: the cap is the only limit
            assert budget.reserved <= budget.limit
            stage.let_go()
    assert barrier.arrived == 100  # and all 100 were inside pydantic-ai at once
    assert all(r.is_ok() for r in results)
    shares = [stage.caps[str(i)] or 0 for i in range(100)]
    # The first, alone, reserved min(limit, 4096); those beside it half that, more than a
    # run spends: none needed to grow.
    assert shares == [4096] + [2048] * 99
    assert sorted(caps) == [2048] * 198 + [4096] * 2  # two steps each, never grown
    assert (budget.used, budget.reserved) == (100 * 300, 0)


# -- growing instead of being cut off ------------------------------------------------------------


async def test_a_run_past_its_first_share_grows_while_tokens_are_free() -> None:
    """A 10_000-token run (ten responses of 1000) starts on 4096. Past it, it takes what it
    spent over (904, then 952) plus a new task's share (2048), twice, and finishes."""
    budget = TokenBudget(limit=100_000)
    agent, caps = stepper(1_000, steps=9)
    async with AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime:
        result = await runtime.run(agent, TaskSpec(input="go"))
    assert result.output == "answered after 9 steps"
    assert result.usage.total_tokens == 10_000
    # What the run's tool saw after each of its first nine responses.
    assert caps == [4096] * 4 + [7048] * 3 + [10_048] * 2
    assert (budget.used, budget.reserved) == (10_000, 0)


async def test_a_run_past_its_share_is_cut_once_nothing_is_free_and_meets_the_bound() -> None:
    """The same run under limit 6000: it grows by what it spent over, to 5000 then 6000 (a
    new task's share, 2048, is never free besides), and its seventh response cannot be
    covered: its tool still runs, and the run is cut off before its next request. The
    budget ends exactly at the documented bound: used == limit + (usage - reservation)."""
    budget = TokenBudget(limit=6_000)
    agent, caps = stepper(1_000, steps=9)
    async with AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime:
        result = await runtime.run(agent, TaskSpec(input="go"))
    assert isinstance(result.error, BudgetExceededError)
    assert isinstance(result.error.__cause__, UsageLimitExceeded)
    assert "6000 tokens reserved" in str(result.error)
    assert caps == [4096] * 4 + [5000, 6000, 6000]
    assert result.usage.total_tokens == 7_000
    final_reservation = 6_000
    assert budget.used == 7_000
    assert budget.used == budget.limit + (result.usage.total_tokens - final_reservation)
    assert budget.reserved == 0


async def test_an_explicit_reserve_per_task_never_grows() -> None:
    budget = TokenBudget(limit=100_000, reserve_per_task=4096)
    agent, caps = stepper(1_000, steps=9)
    async with AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime:
        result = await runtime.run(agent, TaskSpec(input="go"))
    assert isinstance(result.error, BudgetExceededError)
    assert caps == [4096] * 4
    assert result.usage.total_tokens == 5_000  # cut by the response that crossed 4096


async def test_an_answer_past_the_reservation_is_kept() -> None:
    """A run whose answer (one response of 1200) crosses its reservation (1000, all of the
    budget), with nothing free to grow into: its tokens are spent either way, so the answer
    is kept, one response past the reservation: exactly the documented bound. (With an
    explicit ``reserve_per_task``, a hard cap, it is cut off instead.)"""
    budget = TokenBudget(limit=1_000)
    agent, _ = stepper(1_200, steps=0)
    async with AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime:
        result = await runtime.run(agent, TaskSpec(input="go"))
        assert result.output == "answered after 0 steps"
        assert budget.used == 1_200
        assert budget.used == budget.limit + (1_200 - 1_000)
    fixed = TokenBudget(limit=1_000, reserve_per_task=1_000)
    async with AgentRuntime(options=RuntimeOptions(token_budget=fixed)) as runtime:
        cut = await runtime.run(agent, TaskSpec(input="go"))
    assert isinstance(cut.error, BudgetExceededError)
    assert (fixed.used, fixed.reserved, budget.reserved) == (1_200, 0, 0)


async def test_a_retry_keeps_what_the_first_attempt_grew() -> None:
    """An attempt that grew and then failed leaves its growth to the next attempt: the
    task's reservation, not the attempt's, is what grew."""
    budget = TokenBudget(limit=100_000)
    calls = 0

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal calls
        calls += 1
        if calls == 6:  # the first attempt, after growing past 4096 at its fifth response
            raise ConnectionError("dropped")
        done = sum(1 for m in messages for p in m.parts if p.part_kind == "tool-return")
        part = TextPart("done") if done >= 2 and calls > 6 else ToolCallPart("again", {})
        return ModelResponse(parts=[part], usage=tokens(1_000))

    def again() -> str:
        return "more"

    agent = murmur.Agent(name="retried", model=FunctionModel(model), tools=(again,))
    options = RuntimeOptions(token_budget=budget, retry_max_attempts=2, retry_backoff_factor=0)
    async with AgentRuntime(options=options) as runtime:
        result = await runtime.run(agent, TaskSpec(input="go"))
    # 5000 in the first attempt (grown to 7048), 3000 in the second: no cut-off.
    assert result.attempts == 2
    assert result.output == "done"
    assert result.usage.total_tokens == 8_000
    assert (budget.used, budget.reserved) == (8_000, 0)


# -- first come, first served, with growth ------------------------------------------------------


async def test_a_growing_run_takes_only_what_it_spent_while_a_task_waits() -> None:
    """A task waits for a share; a run past its reservation then takes what it spent past
    it (never a share more, which would go ahead of the waiting task), is cut off once
    that is not free, and the waiting task is served as soon as tokens are released."""
    budget = TokenBudget(limit=20_000)
    stage = HoldAfterReserving(hold={"run"})
    gates = {name: anyio.Event() for name in ("b", "c", "d", "e")}
    order: list[str] = []

    async def big(name: str, ctx: AgentContext) -> str:
        if name != "warm":
            await gates[name].wait()
        order.append(name)
        ctx.report_usage(output_tokens=1_000)
        return name

    runner, runner_caps = stepper(1_000, steps=None)
    results: dict[str, AgentResult[Any]] = {}
    run_done = anyio.Event()
    async with AgentRuntime(
        options=RuntimeOptions(token_budget=budget),
        middleware=[stage],
        event_emitter=MultiEventEmitter([]),
    ) as runtime:
        # `big` is known: it spent 1000, so its tasks reserve at least 4000.
        assert (await runtime.run(big, TaskSpec(input="warm", task_id="warm"))).is_ok()

        async def run(agent: Any, name: str) -> None:
            results[name] = await runtime.run(agent, TaskSpec(input=name, task_id=name))
            if name == "run":
                run_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, runner, "run")  # cold: min(19_000, 4096)
            await anyio.wait_all_tasks_blocked()
            for name in ("b", "c", "d", "e"):  # 4000 each while 4000 are free
                tg.start_soon(run, big, name)
                await anyio.wait_all_tasks_blocked()
            assert [stage.caps[n] for n in ("run", "b", "c", "d")] == [4096, 4000, 4000, 4000]
            assert "e" not in stage.caps  # 2904 free: "e" waits
            stage.let_go()
            await run_done.wait()
            # Past 4096 it took 904, then 1000 twice: 0 left, so the next response cut it.
            assert runner_caps == [4096] * 4 + [5000, 6000, 7000, 7000]
            assert isinstance(results["run"].error, BudgetExceededError)
            assert results["run"].usage.total_tokens == 8_000
            assert "e" not in stage.caps  # still waiting: nothing is free (1000 over)
            gates["b"].set()
            await anyio.wait_all_tasks_blocked()
            assert "e" not in stage.caps  # 2000 free, less than its 4000
            gates["c"].set()
            await anyio.wait_all_tasks_blocked()
            assert stage.caps["e"] == 4000  # 5000 free: served at once
            for name in ("d", "e"):
                gates[name].set()
                await anyio.wait_all_tasks_blocked()
    assert order == ["warm", "b", "c", "d", "e"]
    assert all(results[n].is_ok() for n in ("b", "c", "d", "e"))
    assert (budget.used, budget.reserved) == (1_000 + 8_000 + 4 * 1_000, 0)


# -- borrowing children --------------------------------------------------------------------------


async def test_a_parents_run_grows_from_the_budget_after_its_borrowing_child() -> None:
    """Limit 4396: the parent's run reserves 4096, leaving 300, less than a child's share.
    Its first response costs 1000, then its tool spawns a child, which borrows the 3096 the
    run has left and spends 3000 of it. The run's answer (300) no longer fits what the child
    left it (1096); it grows by the 204 it spent past that, from the budget's 300."""
    budget = TokenBudget(limit=4_396)

    async def child_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart("42")], usage=tokens(3_000))

    child = from_pydantic_ai(PydanticAgent(FunctionModel(child_model), name="child"))

    async def delegate(ctx: RunContext[AgentContext]) -> str:
        result = await ctx.deps.run(child, TaskSpec(input="work", task_id="child"))
        return str(result.unwrap())

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1].parts[-1]
        if last.part_kind == "tool-return":
            return ModelResponse(parts=[TextPart(f"child said {last.content}")], usage=tokens(300))
        return ModelResponse(parts=[ToolCallPart("delegate", {})], usage=tokens(1_000))

    parent = murmur.Agent(name="parent", model=FunctionModel(model), tools=(delegate,))
    stage = HoldAfterReserving(hold=set())
    options = RuntimeOptions(token_budget=budget)
    async with AgentRuntime(options=options, middleware=[stage]) as runtime:
        result = await runtime.run(parent, TaskSpec(input="go", task_id="parent"))
    assert stage.caps == {"parent": 4096, "child": 3096}
    assert result.output == "child said 42"
    assert result.usage.total_tokens == 1_300
    assert (budget.used, budget.reserved) == (1_300 + 3_000, 0)


async def test_borrowing_children_grow_from_what_their_parents_run_has_left() -> None:
    """A known parent (it spent 5000 before: it reserves its floor of 20_000) leaves the
    budget 1000 free, less than a child's share, so the two children its tool spawns borrow
    from its run: 4096 for the first (alone there), 2048 for the second. Each child spends
    5000 and grows from what the parent's run has left, not from the budget."""
    budget = TokenBudget(limit=26_000)
    child, child_caps = stepper(1_000, steps=4)

    async def delegate(ctx: RunContext[AgentContext]) -> str:
        results = await ctx.deps.gather(
            child, [TaskSpec(input="a", task_id="a"), TaskSpec(input="b", task_id="b")]
        )
        return ", ".join(str(r.unwrap()) for r in results)

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        first = messages[0].parts[-1]
        last = messages[-1].parts[-1]
        if first.part_kind == "user-prompt" and first.content == "warm":
            return ModelResponse(parts=[TextPart("warm")], usage=tokens(5_000))
        if last.part_kind == "tool-return":
            return ModelResponse(parts=[TextPart(str(last.content))], usage=tokens(500))
        return ModelResponse(parts=[ToolCallPart("delegate", {})], usage=tokens(1_000))

    parent = murmur.Agent(name="parent", model=FunctionModel(model), tools=(delegate,))
    stage = HoldAfterReserving(hold=set())
    options = RuntimeOptions(token_budget=budget)
    async with AgentRuntime(options=options, middleware=[stage]) as runtime:
        assert (await runtime.run(parent, TaskSpec(input="warm"))).is_ok()
        result = await runtime.run(parent, TaskSpec(input="go", task_id="go"))
    assert result.output == "answered after 4 steps, answered after 4 steps"
    assert (stage.caps["go"], stage.caps["a"], stage.caps["b"]) == (20_000, 4096, 2048)
    # "b" grew past 2048 at its third response (952 over, plus a share of 2048).
    assert sorted(child_caps) == [2048] * 2 + [4096] * 4 + [5048] * 2
    assert (budget.used, budget.reserved) == (5_000 + 1_500 + 2 * 5_000, 0)
