"""The pipeline: depth → budget → retry → user stages → timeout → dispatch, and what user
stages can do (see every attempt, short-circuit, rewrite the task, the output, the error)."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from murmur import (
    AgentContext,
    AgentRuntime,
    AgentTimeoutError,
    BudgetExceededError,
    CallNext,
    InputValidationError,
    RuntimeOptions,
    SpawnDepthExceededError,
    Stage,
    TaskSpec,
    TokenBudget,
)
from murmur._pipeline import compose
from murmur.middleware import (
    CostTrackingMiddleware,
    DepthLimitMiddleware,
    RetryMiddleware,
    TimeoutMiddleware,
)

pytestmark = pytest.mark.anyio


class Tracer:
    """A user stage that logs entering and leaving, with the attempt and the outcome."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
        self.log.append(f"{self.name}> #{ctx.attempt + 1}")
        try:
            output = await call_next(ctx)
        except Exception as exc:
            self.log.append(f"{self.name}< #{ctx.attempt} {type(exc).__name__}")
            raise
        self.log.append(f"{self.name}< #{ctx.attempt} ok")
        return output


def test_stages_are_ordered_depth_budget_retry_user_timeout() -> None:
    user_a = Tracer("a", [])
    user_b = Tracer("b", [])
    options = RuntimeOptions(
        max_spawn_depth=3,
        token_budget=TokenBudget(limit=1000),
        retry_max_attempts=2,
        timeout_seconds=5.0,
    )
    stages = AgentRuntime(options=options, middleware=[user_a, user_b])._stages
    assert [type(s) for s in stages] == [
        DepthLimitMiddleware,
        CostTrackingMiddleware,
        RetryMiddleware,
        Tracer,
        Tracer,
        TimeoutMiddleware,
    ]
    assert stages[3] is user_a
    assert stages[4] is user_b


def test_each_stage_runs_on_its_side_and_user_stages_default_to_the_executor() -> None:
    class CallerSide(Tracer):
        side = "caller"

    user_caller = CallerSide("c", [])
    user_executor = Tracer("e", [])
    options = RuntimeOptions(
        max_spawn_depth=3,
        token_budget=TokenBudget(limit=1000),
        retry_max_attempts=2,
        timeout_seconds=5.0,
    )
    runtime = AgentRuntime(options=options, middleware=[user_executor, user_caller])
    # Caller side (around the attempts, where the call is made), then executor side.
    assert [getattr(s, "side", "executor") for s in runtime._stages] == [
        "caller",
        "caller",
        "caller",
        "caller",
        "executor",
        "executor",
    ]
    assert runtime._stages[3] is user_caller
    assert runtime._stages[4] is user_executor


def test_a_stage_with_an_unknown_side_is_refused_naming_it() -> None:
    class Sideways(Tracer):
        side = "sideways"

    with pytest.raises(ValueError, match=r"middleware\[1\]\.side must be 'caller' or 'executor'"):
        AgentRuntime(middleware=[Tracer("a", []), Sideways("b", [])])


def test_user_stages_satisfy_the_stage_protocol() -> None:
    assert isinstance(Tracer("a", []), Stage)


async def test_user_stages_see_every_attempt_inside_retry_and_outside_timeout() -> None:
    log: list[str] = []

    async def flaky(value: str, ctx: AgentContext) -> str:
        log.append(f"agent #{ctx.attempt}")
        if ctx.attempt == 1:
            raise ConnectionError("reset")
        if ctx.attempt == 2:
            await anyio.Event().wait()  # times out
        return value.upper()

    options = RuntimeOptions(retry_max_attempts=3, retry_backoff_factor=0, timeout_seconds=0.05)
    middleware = [Tracer("outer", log), Tracer("inner", log)]
    async with AgentRuntime(options=options, middleware=middleware) as runtime:
        result = await runtime.run(flaky, TaskSpec(input="done"))
    assert (result.output, result.attempts) == ("DONE", 3)
    assert log == [
        "outer> #1",
        "inner> #1",
        "agent #1",
        "inner< #1 ConnectionError",
        "outer< #1 ConnectionError",
        "outer> #2",
        "inner> #2",
        "agent #2",
        # The timeout is inside the user stages: they see the attempt's AgentTimeoutError.
        "inner< #2 AgentTimeoutError",
        "outer< #2 AgentTimeoutError",
        "outer> #3",
        "inner> #3",
        "agent #3",
        "inner< #3 ok",
        "outer< #3 ok",
    ]


async def test_user_stages_run_under_the_budget_but_not_under_the_deadline() -> None:
    seen: dict[str, Any] = {}

    class Look:
        async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
            seen["stage cap"] = ctx.token_cap
            seen["stage deadline"] = anyio.current_effective_deadline()
            return await call_next(ctx)

    async def agent(value: int, ctx: AgentContext) -> int:
        await anyio.lowlevel.checkpoint()  # an agent that can suspend runs under the scope
        seen["agent deadline"] = anyio.current_effective_deadline()
        return value

    options = RuntimeOptions(token_budget=TokenBudget(limit=500), timeout_seconds=30.0)
    async with AgentRuntime(options=options, middleware=[Look()]) as runtime:
        assert (await runtime.run(agent, TaskSpec(input=1))).output == 1
    assert seen["stage cap"] == 500
    assert seen["stage deadline"] == math.inf
    assert math.isfinite(seen["agent deadline"])


async def test_refusals_happen_before_user_stages() -> None:
    log: list[str] = []
    budget = TokenBudget(limit=10)
    budget.charge(10)

    async def child(value: int) -> int:
        return value

    async def parent(value: int, ctx: AgentContext) -> str:
        result = await ctx.run(child, TaskSpec(input=value))
        return type(result.error).__name__

    async with AgentRuntime(
        options=RuntimeOptions(max_spawn_depth=0), middleware=[Tracer("user", log)]
    ) as runtime:
        assert (await runtime.run(parent, TaskSpec(input=1))).output == "SpawnDepthExceededError"
    assert log == ["user> #1", "user< #1 ok"]  # the parent only: the child never got there

    log.clear()
    async with AgentRuntime(
        options=RuntimeOptions(token_budget=budget), middleware=[Tracer("user", log)]
    ) as runtime:
        refused = await runtime.run(child, TaskSpec(input=1))
    assert isinstance(refused.error, BudgetExceededError)
    assert log == []


async def test_a_stage_can_short_circuit() -> None:
    calls: list[int] = []
    cache = {2: "cached two"}

    class Cache:
        async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
            if ctx.task.input in cache:
                return cache[ctx.task.input]  # call_next is never awaited
            return await call_next(ctx)

    async def slow(value: int) -> str:
        calls.append(value)
        return f"computed {value}"

    options = RuntimeOptions(retry_max_attempts=3, timeout_seconds=30.0)
    async with AgentRuntime(options=options, middleware=[Cache()]) as runtime:
        results = await runtime.gather(slow, [TaskSpec(input=i) for i in (1, 2, 3)])
    assert [r.output for r in results] == ["computed 1", "cached two", "computed 3"]
    assert [r.attempts for r in results] == [1, 0, 1]  # no attempt ran for the cached one
    assert calls == [1, 3]


async def test_a_stage_can_refuse_with_an_error() -> None:
    class Deny:
        async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
            if ctx.task.metadata.get("tenant") == "blocked":
                raise PermissionError("tenant is blocked")
            return await call_next(ctx)

    async def agent(value: int) -> int:
        return value

    async with AgentRuntime(middleware=[Deny()]) as runtime:
        blocked = await runtime.run(agent, TaskSpec(input=1, metadata={"tenant": "blocked"}))
        allowed = await runtime.run(agent, TaskSpec(input=2, metadata={"tenant": "ok"}))
    assert isinstance(blocked.error, PermissionError)
    assert allowed.output == 2


class Query(BaseModel):
    text: str
    shouted: bool = False


async def test_a_stage_can_rewrite_the_task_which_is_revalidated() -> None:
    seen: list[Query] = []

    class Shout:
        async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
            task = ctx.task
            if task.input == "break":
                ctx.task = task.model_copy(update={"input": {"wrong": "shape"}})
            else:
                ctx.task = task.model_copy(
                    update={"input": {"text": str(task.input).upper(), "shouted": True}}
                )
            return await call_next(ctx)

    async def answer(query: Query) -> str:
        seen.append(query)
        return f"{query.text}!"

    async with AgentRuntime(middleware=[Shout()]) as runtime:
        ok = await runtime.run(answer, TaskSpec(input="hello", task_id="t1"))
        bad = await runtime.run(answer, TaskSpec(input="break"))
    assert ok.output == "HELLO!"
    assert ok.task_id == "t1"
    assert seen == [Query(text="HELLO", shouted=True)]
    assert isinstance(bad.error, InputValidationError)


async def test_a_stage_can_rewrite_the_output_and_the_error() -> None:
    class Rewrite:
        async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
            try:
                output = await call_next(ctx)
            except KeyError as exc:
                return f"recovered from {exc}"
            except ZeroDivisionError as exc:
                raise ArithmeticError("rewritten") from exc
            return {"wrapped": output}

    async def agent(value: str) -> str:
        if value == "key":
            raise KeyError("k")
        if value == "zero":
            raise ZeroDivisionError("z")
        return value

    async with AgentRuntime(middleware=[Rewrite()]) as runtime:
        wrapped, recovered, rewritten = await runtime.gather(
            agent, [TaskSpec(input=v) for v in ("plain", "key", "zero")]
        )
    assert wrapped.output == {"wrapped": "plain"}
    assert recovered.is_ok()
    assert recovered.output == "recovered from 'k'"
    assert type(rewritten.error) is ArithmeticError
    assert isinstance(rewritten.error.__cause__, ZeroDivisionError)


async def test_a_stage_can_make_an_error_retryable() -> None:
    """User stages sit inside retry, so what they raise is what retry judges."""
    attempts: list[int] = []

    class Transient:
        async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
            try:
                return await call_next(ctx)
            except RuntimeError as exc:
                raise ConnectionError(f"treated as transient: {exc}") from exc

    async def agent(value: int, ctx: AgentContext) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError("server hiccup")
        return value

    options = RuntimeOptions(retry_max_attempts=3, retry_backoff_factor=0)
    async with AgentRuntime(options=options, middleware=[Transient()]) as runtime:
        result = await runtime.run(agent, TaskSpec(input=7))
    assert (result.output, result.attempts) == (7, 3)
    assert attempts == [1, 2, 3]


async def test_the_pipeline_is_composed_once_at_construction() -> None:
    log: list[str] = []
    stages: list[Any] = [Tracer("first", log)]
    runtime = AgentRuntime(middleware=stages)
    stages.append(Tracer("late", log))  # changing the list afterwards changes nothing

    async def agent(value: int) -> int:
        return value

    async with runtime:
        await runtime.run(agent, TaskSpec(input=1))
        await runtime.run(agent, TaskSpec(input=2))
    assert log == ["first> #1", "first< #1 ok", "first> #1", "first< #1 ok"]


def test_a_stage_that_is_not_callable_is_refused() -> None:
    with pytest.raises(TypeError, match=r"middleware\[1\]"):
        AgentRuntime(middleware=[Tracer("ok", []), "not a stage"])  # type: ignore[list-item]


async def test_compose_wraps_the_first_stage_outermost() -> None:
    log: list[str] = []

    async def endpoint(ctx: Any) -> str:
        log.append("endpoint")
        return "out"

    call = compose([Tracer("1", log), Tracer("2", log), Tracer("3", log)], endpoint)

    class Ctx:
        attempt = 0

    assert await call(Ctx()) == "out"  # type: ignore[arg-type]
    assert log == ["1> #1", "2> #1", "3> #1", "endpoint", "3< #0 ok", "2< #0 ok", "1< #0 ok"]


async def test_timeout_error_is_what_user_stages_see_and_a_spawn_refusal_is_not_retried() -> None:
    log: list[str] = []

    async def child(value: int) -> int:
        return value

    async def parent(value: int, ctx: AgentContext) -> str:
        refused = await ctx.run(child, TaskSpec(input=value))
        assert isinstance(refused.error, SpawnDepthExceededError)
        await anyio.Event().wait()
        return "never"

    options = RuntimeOptions(max_spawn_depth=0, timeout_seconds=0.05)
    async with AgentRuntime(options=options, middleware=[Tracer("user", log)]) as runtime:
        result = await runtime.run(parent, TaskSpec(input=1))
    assert isinstance(result.error, AgentTimeoutError)
    assert log == ["user> #1", "user< #1 AgentTimeoutError"]
