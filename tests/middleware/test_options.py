"""RuntimeOptions: defaults, validation naming the field, and the stages it builds."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

from murmur import AgentRuntime, BudgetExceededError, RuntimeOptions, TaskSpec, TokenBudget
from murmur.middleware import (
    CostTrackingMiddleware,
    DepthLimitMiddleware,
    RetryMiddleware,
    TimeoutMiddleware,
)
from murmur.middleware import TokenBudget as MiddlewareTokenBudget
from murmur.middleware.cost_tracking import TokenBudget as CostTrackingTokenBudget

pytestmark = pytest.mark.anyio


def test_defaults() -> None:
    options = RuntimeOptions()
    assert options.timeout_seconds is None
    assert options.retry_max_attempts == 1
    assert options.retry_initial_delay == 1.0
    assert options.retry_backoff_factor == 2.0
    assert options.retry_max_delay == 60.0
    assert options.retry_jitter == 0.1
    assert options.retry_on is None
    assert options.token_budget is None
    assert options.max_spawn_depth is None
    assert options.max_concurrency == 100


def test_the_seed_constructor_calls_work_verbatim() -> None:
    TOKEN_LIMIT = 10_000
    options = RuntimeOptions(
        timeout_seconds=60.0,
        retry_max_attempts=3,
        retry_backoff_factor=1.5,
    )
    assert (options.timeout_seconds, options.retry_max_attempts) == (60.0, 3)
    assert options.retry_backoff_factor == 1.5
    budgeted = RuntimeOptions(token_budget=TokenBudget(limit=TOKEN_LIMIT))
    assert isinstance(budgeted.token_budget, TokenBudget)
    assert budgeted.token_budget.limit == TOKEN_LIMIT
    assert RuntimeOptions(max_spawn_depth=3).max_spawn_depth == 3
    assert AgentRuntime(options=options).options is options


def test_token_budget_is_one_class_wherever_it_is_imported_from() -> None:
    assert TokenBudget is CostTrackingTokenBudget is MiddlewareTokenBudget


def test_options_are_frozen() -> None:
    options = RuntimeOptions(retry_max_attempts=3)
    with pytest.raises(ValidationError, match="frozen"):
        options.retry_max_attempts = 5  # type: ignore[misc]
    assert options.retry_max_attempts == 3


INVALID: list[tuple[str, Any]] = [
    ("retry_max_attempts", 0),
    ("retry_max_attempts", -2),
    ("retry_max_attempts", 2.5),
    ("retry_max_attempts", True),
    ("retry_max_attempts", "3"),
    ("timeout_seconds", -1.0),
    ("timeout_seconds", 0),
    ("timeout_seconds", math.nan),
    ("timeout_seconds", "soon"),
    ("retry_initial_delay", -0.1),
    ("retry_initial_delay", math.nan),
    ("retry_initial_delay", "100ms"),
    ("retry_backoff_factor", -0.5),
    ("retry_max_delay", -1.0),
    ("retry_jitter", -0.1),
    ("retry_jitter", 1.5),
    ("retry_on", (ConnectionError, "TimeoutError")),
    ("retry_on", [ValueError, int]),
    ("retry_on", (42,)),
    ("retry_on", "ConnectionError"),
    ("retry_on", 42),
    ("token_budget", 10_000),
    ("token_budget", {"limit": 10}),
    ("max_spawn_depth", -1),
    ("max_spawn_depth", 1.5),
    ("max_concurrency", 0),
]


@pytest.mark.parametrize(("field", "value"), INVALID)
def test_invalid_values_fail_at_construction_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        RuntimeOptions(**{field: value})
    assert field in str(info.value)
    assert all(error["loc"][0] == field for error in info.value.errors())


def test_retry_on_with_a_non_exception_type_says_what_is_wrong() -> None:
    with pytest.raises(ValidationError, match=r"retry_on[\s\S]*exception types"):
        RuntimeOptions(retry_on=(ConnectionError, int))


def test_an_unknown_option_is_refused_by_name() -> None:
    with pytest.raises(ValidationError) as info:
        RuntimeOptions(retries=3)  # type: ignore[call-arg]
    (error,) = info.value.errors()
    assert error["loc"] == ("retries",)
    assert error["type"] == "extra_forbidden"


def test_retry_on_accepts_a_type_a_list_a_tuple_or_a_predicate() -> None:
    assert RuntimeOptions(retry_on=ValueError).retry_on == (ValueError,)
    assert RuntimeOptions(retry_on=[ValueError, KeyError]).retry_on == (ValueError, KeyError)
    assert RuntimeOptions(retry_on=(ConnectionError,)).retry_on == (ConnectionError,)

    def predicate(error: BaseException) -> bool:
        return "flaky" in str(error)

    assert RuntimeOptions(retry_on=predicate).retry_on is predicate


def test_boundary_values_are_accepted() -> None:
    options = RuntimeOptions(
        timeout_seconds=0.001,
        retry_max_attempts=1,
        retry_initial_delay=0,
        retry_backoff_factor=0,
        retry_max_delay=0,
        retry_jitter=1,
        max_spawn_depth=0,
        max_concurrency=1,
    )
    assert options.retry_jitter == 1
    assert RuntimeOptions(retry_jitter=0, retry_max_delay=None).retry_max_delay is None


def test_runtime_refuses_options_that_are_not_runtime_options() -> None:
    with pytest.raises(TypeError, match="RuntimeOptions"):
        AgentRuntime(options={"timeout_seconds": 1.0})  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [0, -5, 1.5, True, "100"])
def test_token_budget_limit_is_validated(limit: Any) -> None:
    with pytest.raises(ValueError, match="limit"):
        TokenBudget(limit=limit)


@pytest.mark.parametrize("reserve", [0, -1, 2.5, False])
def test_token_budget_reserve_per_task_is_validated(reserve: Any) -> None:
    with pytest.raises(ValueError, match="reserve_per_task"):
        TokenBudget(limit=100, reserve_per_task=reserve)


def test_token_budget_defaults_and_readable_state() -> None:
    small = TokenBudget(limit=500)
    assert small.reserve_per_task == 500
    big = TokenBudget(limit=1_000_000)
    assert big.reserve_per_task == 4096
    assert (big.used, big.reserved, big.remaining, big.exhausted) == (0, 0, 1_000_000, False)
    big.charge(999_999)
    assert (big.used, big.remaining, big.exhausted) == (999_999, 1, False)
    big.charge(5)
    assert (big.used, big.remaining, big.exhausted) == (1_000_004, 0, True)
    assert "used=1000004" in repr(big)


def test_middleware_constructors_validate_their_arguments() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryMiddleware(0)
    with pytest.raises(ValueError, match="initial_delay"):
        RetryMiddleware(3, initial_delay=-0.5)
    with pytest.raises(ValueError, match="initial_delay"):
        RetryMiddleware(3, initial_delay=math.nan)
    with pytest.raises(ValueError, match="backoff_factor"):
        RetryMiddleware(3, backoff_factor=-1)
    with pytest.raises(ValueError, match="max_delay"):
        RetryMiddleware(3, max_delay=-1)
    with pytest.raises(ValueError, match="jitter"):
        RetryMiddleware(3, jitter=2)
    with pytest.raises(ValueError, match="timeout"):
        TimeoutMiddleware(0)
    with pytest.raises(ValueError, match="timeout"):
        TimeoutMiddleware(-3)
    with pytest.raises(ValueError, match="max_depth"):
        DepthLimitMiddleware(-1)
    with pytest.raises(TypeError, match="TokenBudget"):
        CostTrackingMiddleware(100)  # type: ignore[arg-type]


def test_default_options_build_no_stages() -> None:
    assert AgentRuntime(options=RuntimeOptions())._stages == ()
    # One attempt means no retry stage at all.
    assert AgentRuntime(options=RuntimeOptions(retry_max_attempts=1))._stages == ()


def test_options_build_the_stages_they_ask_for() -> None:
    budget = TokenBudget(limit=1000)
    stages = AgentRuntime(
        options=RuntimeOptions(
            timeout_seconds=2.5,
            retry_max_attempts=4,
            retry_initial_delay=0.1,
            retry_backoff_factor=1.5,
            retry_max_delay=7.0,
            retry_jitter=0.25,
            retry_on=(ValueError,),
            token_budget=budget,
            max_spawn_depth=2,
        ),
    )._stages
    depth, cost, retry, timeout = stages
    assert isinstance(depth, DepthLimitMiddleware)
    assert depth.max_depth == 2
    assert isinstance(cost, CostTrackingMiddleware)
    assert cost.budget is budget
    assert isinstance(retry, RetryMiddleware)
    assert (
        retry.max_attempts,
        retry.initial_delay,
        retry.backoff_factor,
        retry.max_delay,
        retry.jitter,
    ) == (4, 0.1, 1.5, 7.0, 0.25)
    default_retry = AgentRuntime(options=RuntimeOptions(retry_max_attempts=2))._stages[0]
    assert default_retry.initial_delay == 1.0  # type: ignore[attr-defined]
    assert isinstance(timeout, TimeoutMiddleware)
    assert timeout.seconds == 2.5


async def test_max_concurrency_option_is_the_gather_default() -> None:
    active = 0
    peak = 0

    async def agent(value: int) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        active -= 1
        return value

    async with AgentRuntime(options=RuntimeOptions(max_concurrency=3)) as runtime:
        results = await runtime.gather(agent, [TaskSpec(input=i) for i in range(12)])
    assert [r.output for r in results] == list(range(12))
    assert peak == 3


async def test_a_budget_shared_by_two_runtimes_is_one_allowance() -> None:
    budget = TokenBudget(limit=150)

    async def spend(value: int, ctx: Any) -> int:
        ctx.report_usage(input_tokens=100)
        return value

    async with (
        AgentRuntime(options=RuntimeOptions(token_budget=budget)) as first,
        AgentRuntime(options=RuntimeOptions(token_budget=budget)) as second,
    ):
        assert (await first.run(spend, TaskSpec(input=1))).is_ok()
        assert (await second.run(spend, TaskSpec(input=2))).is_ok()
        refused = await first.run(spend, TaskSpec(input=3))
    assert isinstance(refused.error, BudgetExceededError)
    assert budget.used == 200
