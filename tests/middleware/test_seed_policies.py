"""The product page's policy sections, executed as written.

"Replace retry / timeout boilerplate with middleware" and "Replace global token bookkeeping
with TokenBudget" are copied verbatim (top-level ``await`` included) and run against
pydantic-ai FunctionModel agents on asyncio and Trio; the table's depth row ("Don't recurse
beyond N levels" → ``RuntimeOptions(max_spawn_depth=N)``) runs through ``ctx.run``.

The retry snippet waits ``1.5 ** i`` seconds between attempts. To keep the tests fast the
snippet is run in two pieces, construction then call (together exactly the snippet), and
between them the runtime's retry stage gets a fake clock that records the waits.
"""

from __future__ import annotations

import asyncio
import threading
import types
from typing import Any

import anyio
import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage
from structlog.testing import capture_logs

import murmur
from murmur import (
    AgentContext,
    AgentResult,
    AgentRuntime,
    AgentTimeoutError,
    BudgetExceededError,
    RuntimeOptions,
    SpawnDepthExceededError,
    TaskSpec,
    TokenBudget,
    from_pydantic_ai,
)
from murmur.middleware import RetryMiddleware, TimeoutMiddleware
from support import FakeSleep, exec_snippet

pytestmark = pytest.mark.anyio

RETRY_BEFORE = """\
async def with_retry(coro_fn, *args, attempts=3, backoff=1.5):
    for i in range(attempts):
        try:
            async with asyncio.timeout(60):
                return await coro_fn(*args)
        except (TimeoutError, ConnectionError):
            if i + 1 == attempts:
                raise
            await asyncio.sleep(backoff ** i)


result = await with_retry(my_agent, question, attempts=3)
"""

RETRY_AFTER = """\
from murmur import AgentRuntime, RuntimeOptions

runtime = AgentRuntime(
    options=RuntimeOptions(
        timeout_seconds=60.0,
        retry_max_attempts=3,
        retry_backoff_factor=1.5,
    ),
)

result = await runtime.run(my_agent, TaskSpec(input=question))
"""

# The snippet, cut where the runtime exists and has not run anything yet.
RETRY_AFTER_BUILD, _, _call = RETRY_AFTER.partition("\nresult = ")
RETRY_AFTER_CALL = "result = " + _call
assert RETRY_AFTER_BUILD + "\n" + RETRY_AFTER_CALL == RETRY_AFTER

BUDGET_BEFORE = """\
TOTAL_TOKENS = 0


async def call_with_tracking(agent_fn, q):
    global TOTAL_TOKENS
    if TOTAL_TOKENS >= TOKEN_LIMIT:
        raise BudgetExhausted()
    res = await agent_fn(q)
    TOTAL_TOKENS += res.usage.total_tokens
    return res
"""

BUDGET_AFTER = """\
from murmur import AgentRuntime, RuntimeOptions
from murmur.middleware.cost_tracking import TokenBudget

runtime = AgentRuntime(
    options=RuntimeOptions(token_budget=TokenBudget(limit=TOKEN_LIMIT)),
)

# CostTrackingMiddleware does pre-check (raises BudgetExceededError) +
# post-charge (deducts from the budget) automatically. A BUDGET_EXCEEDED
# RuntimeEvent fires before the error is raised.
"""


def stages_of(runtime: AgentRuntime) -> tuple[Any, ...]:
    return runtime._stages


def use_fake_clock(runtime: AgentRuntime) -> FakeSleep:
    (retry,) = [s for s in stages_of(runtime) if isinstance(s, RetryMiddleware)]
    sleep = FakeSleep()
    retry._sleep = sleep
    return sleep


def prompt_of(messages: list[ModelMessage]) -> str:
    request = messages[0]
    assert isinstance(request, ModelRequest)
    return str(request.parts[-1].content)


def flaky_model(failures: int, log: list[str]) -> FunctionModel:
    """Raises ConnectionError ``failures`` times, then answers the prompt."""

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        log.append("call")
        if len(log) <= failures:
            raise ConnectionError(f"connection reset #{len(log)}")
        return ModelResponse(parts=[TextPart(f"answer to {prompt_of(messages)}")])

    return FunctionModel(model)


def check_seed_waits(delays: list[float]) -> None:
    # 1.5 ** 0 and 1.5 ** 1 seconds, spread by the default 10 % jitter.
    first, second = delays
    assert 0.9 <= first <= 1.1
    assert 1.35 <= second <= 1.65


# -- "Replace retry / timeout boilerplate with middleware" -----------------------------------------


@pytest.mark.parametrize("flavour", ["from_pydantic_ai", "murmur.Agent", "pydantic_ai.Agent"])
async def test_retry_snippet_retries_a_flaky_function_model_agent(flavour: str) -> None:
    log: list[str] = []
    model = flaky_model(failures=2, log=log)
    my_agent: Any
    if flavour == "from_pydantic_ai":
        my_agent = from_pydantic_ai(PydanticAgent(model, name="my_agent"))
    elif flavour == "murmur.Agent":
        my_agent = murmur.Agent(name="my_agent", model=model)
    else:
        my_agent = PydanticAgent(model, name="my_agent")
    namespace: dict[str, Any] = {
        "my_agent": my_agent,
        "question": "what is murmur?",
        "TaskSpec": TaskSpec,  # imported by the page's earlier section
    }
    await exec_snippet(RETRY_AFTER_BUILD, namespace)
    runtime = namespace["runtime"]
    try:
        assert runtime.options.timeout_seconds == 60.0
        assert [type(s) for s in stages_of(runtime)] == [RetryMiddleware, TimeoutMiddleware]
        sleep = use_fake_clock(runtime)
        await exec_snippet(RETRY_AFTER_CALL, namespace)
    finally:
        await runtime.aclose()
    result = namespace["result"]
    assert isinstance(result, AgentResult)
    assert result.is_ok(), result.error
    assert result.output == "answer to what is murmur?"
    assert result.attempts == 3
    assert log == ["call"] * 3
    check_seed_waits(sleep.delays)


async def test_retry_snippet_runs_unmodified() -> None:
    """The whole snippet, no fake clock: an agent that answers at once needs no wait."""
    log: list[str] = []
    my_agent = from_pydantic_ai(PydanticAgent(flaky_model(failures=0, log=log)))
    namespace: dict[str, Any] = {"my_agent": my_agent, "question": "q", "TaskSpec": TaskSpec}
    await exec_snippet(RETRY_AFTER, namespace)
    await namespace["runtime"].aclose()
    assert namespace["result"].output == "answer to q"
    assert namespace["result"].attempts == 1


async def test_retry_snippet_gives_up_after_three_attempts() -> None:
    log: list[str] = []
    my_agent = from_pydantic_ai(PydanticAgent(flaky_model(failures=5, log=log)))
    namespace: dict[str, Any] = {"my_agent": my_agent, "question": "q", "TaskSpec": TaskSpec}
    await exec_snippet(RETRY_AFTER_BUILD, namespace)
    runtime = namespace["runtime"]
    try:
        sleep = use_fake_clock(runtime)
        await exec_snippet(RETRY_AFTER_CALL, namespace)
    finally:
        await runtime.aclose()
    result = namespace["result"]
    # Like the hand-rolled loop's final `raise`: the last ConnectionError, earlier ones chained.
    assert isinstance(result.error, ConnectionError)
    assert str(result.error) == "connection reset #3"
    assert str(result.error.__context__) == "connection reset #2"
    assert result.attempts == 3
    assert len(log) == 3
    check_seed_waits(sleep.delays)


async def test_retry_snippet_timeout_wraps_each_attempt() -> None:
    """As in the "before" code, the timeout wraps each attempt, and a timeout is retried.

    For the hanging first attempt, 60 s is shortened to 0.5 s on the built runtime's timeout
    stage (a fake clock again), and put back once that attempt has been cancelled."""
    calls = 0

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            try:
                await anyio.Event().wait()  # hangs: only the per-attempt timeout ends it
            finally:
                timeout.seconds = 60.0
        return ModelResponse(parts=[TextPart("second attempt")])

    my_agent = from_pydantic_ai(PydanticAgent(FunctionModel(model)))
    namespace: dict[str, Any] = {"my_agent": my_agent, "question": "q", "TaskSpec": TaskSpec}
    await exec_snippet(RETRY_AFTER_BUILD, namespace)
    runtime = namespace["runtime"]
    try:
        sleep = use_fake_clock(runtime)
        (timeout,) = [s for s in stages_of(runtime) if isinstance(s, TimeoutMiddleware)]
        timeout.seconds = 0.5
        await exec_snippet(RETRY_AFTER_CALL, namespace)
    finally:
        await runtime.aclose()
    result = namespace["result"]
    assert result.output == "second attempt"
    assert result.attempts == 2
    assert len(sleep.delays) == 1
    assert issubclass(AgentTimeoutError, TimeoutError)  # what the "before" code caught


def test_retry_after_matches_before(anyio_backend: str) -> None:
    """Same agent, same answer, same attempts, same waits (up to the jitter)."""

    def make_agent() -> tuple[Any, list[int]]:
        calls: list[int] = []

        async def my_agent(question: str) -> str:
            calls.append(len(calls) + 1)
            await anyio.lowlevel.checkpoint()
            if len(calls) < 3:
                raise ConnectionError("reset")
            return f"answer to {question}"

        return my_agent, calls

    threads_before = [t for t in threading.enumerate() if t.name.startswith("murmur-")]
    before_sleep = FakeSleep()
    fake_asyncio = types.SimpleNamespace(timeout=asyncio.timeout, sleep=before_sleep)
    agent, before_calls = make_agent()
    before = asyncio.run(
        exec_snippet(RETRY_BEFORE, {"asyncio": fake_asyncio, "my_agent": agent, "question": "q"})
    )

    async def after_snippet() -> tuple[dict[str, Any], FakeSleep]:
        agent, _ = make_agent()
        namespace: dict[str, Any] = {"my_agent": agent, "question": "q", "TaskSpec": TaskSpec}
        await exec_snippet(RETRY_AFTER_BUILD, namespace)
        sleep = use_fake_clock(namespace["runtime"])
        try:
            await exec_snippet(RETRY_AFTER_CALL, namespace)
        finally:
            await namespace["runtime"].aclose()
        return namespace, sleep

    after, after_sleep = anyio.run(after_snippet, backend=anyio_backend)
    assert before["result"] == after["result"].output == "answer to q"
    assert len(before_calls) == after["result"].attempts == 3
    assert before_sleep.delays == [1.0, 1.5]
    check_seed_waits(after_sleep.delays)
    threads_after = [t for t in threading.enumerate() if t.name.startswith("murmur-")]
    assert threads_after == threads_before


# -- "Replace global token bookkeeping with TokenBudget" -------------------------------------------


def costly_agent(tokens_per_call: int) -> PydanticAgent[None, str]:
    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        response = ModelResponse(parts=[TextPart(f"answer to {prompt_of(messages)}")])
        response.usage = RequestUsage(input_tokens=tokens_per_call - 20, output_tokens=20)
        return response

    return PydanticAgent(FunctionModel(model), name="costly")


async def test_budget_snippet_pre_checks_post_charges_and_reports() -> None:
    namespace = await exec_snippet(BUDGET_AFTER, {"TOKEN_LIMIT": 500})
    runtime = namespace["runtime"]
    budget = runtime.options.token_budget
    assert isinstance(budget, TokenBudget)
    assert isinstance(namespace["TokenBudget"](limit=1), TokenBudget)
    my_agent = costly_agent(tokens_per_call=100)
    try:
        with capture_logs() as logs:
            results = [await runtime.run(my_agent, TaskSpec(input=f"q{i}")) for i in range(7)]
    finally:
        await runtime.aclose()
    assert [r.is_ok() for r in results] == [True] * 5 + [False] * 2
    assert all(isinstance(r.error, BudgetExceededError) for r in results[5:])
    assert all(r.attempts == 0 for r in results[5:])  # refused by the pre-check
    assert budget.used == 500  # post-charged: 5 runs x 100 tokens
    assert budget.remaining == 0
    # The default emitter logs BUDGET_EXCEEDED, before the failure it causes.
    kinds = [entry["event"] for entry in logs]
    assert kinds.count("budget.exceeded") == 2
    assert kinds.index("budget.exceeded") < kinds.index("task.failed")


async def test_budget_snippet_with_concurrent_tasks_and_spawned_children() -> None:
    namespace = await exec_snippet(BUDGET_AFTER, {"TOKEN_LIMIT": 1_000})
    runtime = namespace["runtime"]
    budget = runtime.options.token_budget
    worker = costly_agent(tokens_per_call=100)

    async def lead(question: str, ctx: AgentContext) -> int:
        results = await ctx.gather(worker, [TaskSpec(input=f"{question}.{i}") for i in range(3)])
        return sum(r.is_ok() for r in results)

    try:
        results = await runtime.gather(lead, [TaskSpec(input=f"q{i}") for i in range(5)])
    finally:
        await runtime.aclose()
    # Ten child runs fit the budget, whichever leads they belong to; the rest are refused,
    # and so is a lead that finds the budget already spent.
    assert sum(r.output for r in results if r.is_ok()) == 10
    assert all(isinstance(r.error, BudgetExceededError) for r in results if not r.is_ok())
    assert budget.used == 1_000
    assert budget.reserved == 0


def test_budget_after_matches_before(anyio_backend: str) -> None:
    class BudgetExhausted(Exception):
        pass

    before_agent = costly_agent(tokens_per_call=100)

    async def before_snippet() -> tuple[int, int]:
        namespace = await exec_snippet(
            BUDGET_BEFORE, {"TOKEN_LIMIT": 500, "BudgetExhausted": BudgetExhausted}
        )
        done = 0
        try:
            for i in range(10):
                await namespace["call_with_tracking"](before_agent.run, f"q{i}")
                done += 1
        except BudgetExhausted:
            pass
        return done, namespace["TOTAL_TOKENS"]

    async def after_snippet() -> tuple[int, int]:
        namespace = await exec_snippet(BUDGET_AFTER, {"TOKEN_LIMIT": 500})
        runtime = namespace["runtime"]
        done = 0
        try:
            for i in range(10):
                result = await runtime.run(costly_agent(100), TaskSpec(input=f"q{i}"))
                if isinstance(result.error, BudgetExceededError):
                    break
                done += 1
        finally:
            await runtime.aclose()
        return done, runtime.options.token_budget.used

    before = asyncio.run(before_snippet())
    after = anyio.run(after_snippet, backend=anyio_backend)
    assert before == after == (5, 500)


# -- the table's depth row ------------------------------------------------------------------------


async def test_dont_recurse_beyond_n_levels() -> None:
    N = 2

    async def recurse(level: int, ctx: AgentContext) -> str:
        child = await ctx.run(recurse, TaskSpec(input=level + 1))
        if isinstance(child.error, SpawnDepthExceededError):
            return f"stopped below level {level}"
        return str(child.unwrap())

    async with AgentRuntime(options=RuntimeOptions(max_spawn_depth=N)) as runtime:
        result = await runtime.run(recurse, TaskSpec(input=0))
    assert result.output == f"stopped below level {N}"
