"""RetryMiddleware: real pydantic-ai failures, backoff schedule, Retry-After, cancellation."""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import RunContext
from pydantic_ai.exceptions import ModelAPIError, ModelHTTPError, UnexpectedModelBehavior
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

import murmur
from murmur import (
    AgentContext,
    AgentRuntime,
    AgentTimeoutError,
    BudgetExceededError,
    EventType,
    InputValidationError,
    RuntimeEvent,
    RuntimeOptions,
    SpawnDepthExceededError,
    TaskSpec,
    from_pydantic_ai,
)
from murmur.middleware import RetryMiddleware, is_retryable
from support import FakeSleep, Recorder

pytestmark = pytest.mark.anyio

#: Retry without waiting: these tests are about which failures are retried, not when.
NO_WAIT = {"retry_backoff_factor": 0.0}


def failing_then(
    failures: list[BaseException], answer: str = "done"
) -> tuple[Callable[..., Any], list[int]]:
    """A FunctionModel function raising ``failures`` in turn, then answering; and its calls."""
    calls: list[int] = []

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append(len(calls) + 1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return ModelResponse(parts=[TextPart(answer)])

    return model, calls


def http_error(status: int, headers: dict[str, str] | None = None, n: int = 0) -> ModelHTTPError:
    return ModelHTTPError(status, "test-model", body={"n": n}, headers=headers)


# -- retry then success, with real pydantic-ai agents ------------------------------------------


@pytest.mark.parametrize("flavour", ["from_pydantic_ai", "murmur.Agent", "raw pydantic_ai.Agent"])
async def test_connection_error_twice_then_success(flavour: str) -> None:
    model, calls = failing_then([ConnectionError("reset 1"), ConnectionError("reset 2")])
    agent: Any
    if flavour == "from_pydantic_ai":
        agent = from_pydantic_ai(PydanticAgent(FunctionModel(model)), name="flaky")
    elif flavour == "murmur.Agent":
        agent = murmur.Agent(name="flaky", model=FunctionModel(model))
    else:
        agent = PydanticAgent(FunctionModel(model), name="flaky")
    recorder = Recorder()
    options = RuntimeOptions(retry_max_attempts=3, **NO_WAIT)
    async with AgentRuntime(options=options, event_emitter=recorder) as runtime:
        result = await runtime.run(agent, TaskSpec(input="question"))
    assert result.is_ok(), result.error
    assert result.output == "done"
    assert result.attempts == 3
    assert calls == [1, 2, 3]
    scheduled = recorder.of(EventType.RETRY_SCHEDULED)
    assert [e.data["next_attempt"] for e in scheduled] == [2, 3]
    assert [e.attempt for e in scheduled] == [1, 2]
    assert [e.error.type if e.error else None for e in scheduled] == ["ConnectionError"] * 2
    assert [e.error.message if e.error else None for e in scheduled] == ["reset 1", "reset 2"]


async def test_model_http_503_is_retried_until_success() -> None:
    model, calls = failing_then([http_error(503, n=1), http_error(503, n=2)], answer="recovered")
    agent = from_pydantic_ai(PydanticAgent(FunctionModel(model)))
    async with AgentRuntime(options=RuntimeOptions(retry_max_attempts=3, **NO_WAIT)) as runtime:
        result = await runtime.run(agent, TaskSpec(input="q"))
    assert result.output == "recovered"
    assert result.attempts == 3
    assert len(calls) == 3


async def test_usage_of_failed_attempts_is_kept() -> None:
    """Usage spent by an attempt that then failed counts in the task's usage."""
    calls = 0

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("dropped after the tool call")
        if messages[-1].parts[-1].part_kind == "tool-return":
            response = ModelResponse(parts=[TextPart("final")])
        else:
            response = ModelResponse(parts=[ToolCallPart("lookup", {})])
        response.usage = RequestUsage(input_tokens=10, output_tokens=5)
        return response

    inner = PydanticAgent(FunctionModel(model))

    @inner.tool_plain
    def lookup() -> str:
        return "found"

    async with AgentRuntime(options=RuntimeOptions(retry_max_attempts=2, **NO_WAIT)) as runtime:
        result = await runtime.run(inner, TaskSpec(input="q"))
    assert result.output == "final"
    assert result.attempts == 2
    # Attempt 1: one tool-call response (15 tokens) then the failure; attempt 2: two responses.
    assert result.usage.total_tokens == 45
    assert result.usage.requests == 3


# -- retries exhausted -------------------------------------------------------------------------


async def test_exhausted_retries_return_the_last_error_with_the_earlier_ones_reachable() -> None:
    errors = [ConnectionError("first"), ConnectionError("second"), ConnectionError("third")]
    model, calls = failing_then(list(errors))
    agent = from_pydantic_ai(PydanticAgent(FunctionModel(model)))
    async with AgentRuntime(options=RuntimeOptions(retry_max_attempts=3, **NO_WAIT)) as runtime:
        result = await runtime.run(agent, TaskSpec(input="q"))
    assert not result.is_ok()
    assert result.attempts == 3
    assert len(calls) == 3
    assert result.error is errors[2]
    assert result.error.__context__ is errors[1]
    assert errors[1].__context__ is errors[0]
    notes = "\n".join(getattr(result.error, "__notes__", []))
    assert "attempt 3 of 3" in notes
    assert "ConnectionError: first" in notes
    assert "ConnectionError: second" in notes
    with pytest.raises(ConnectionError, match="third"):
        result.unwrap()


async def test_exhausted_http_errors_chain_through_context() -> None:
    model, _ = failing_then([http_error(503, n=i) for i in (1, 2)])
    agent = from_pydantic_ai(PydanticAgent(FunctionModel(model)))
    async with AgentRuntime(options=RuntimeOptions(retry_max_attempts=2, **NO_WAIT)) as runtime:
        result = await runtime.run(agent, TaskSpec(input="q"))
    assert isinstance(result.error, ModelHTTPError)
    assert result.error.body == {"n": 2}
    earlier = result.error.__context__
    assert isinstance(earlier, ModelHTTPError)
    assert earlier.body == {"n": 1}
    assert result.attempts == 2


async def test_a_different_final_error_still_chains_to_the_retried_one() -> None:
    """A retryable failure followed by a non-retryable one: the last is reported, chained."""
    model, calls = failing_then([ConnectionError("flaky"), ValueError("bug in the prompt")])
    agent = from_pydantic_ai(PydanticAgent(FunctionModel(model)))
    async with AgentRuntime(options=RuntimeOptions(retry_max_attempts=5, **NO_WAIT)) as runtime:
        result = await runtime.run(agent, TaskSpec(input="q"))
    assert isinstance(result.error, ValueError)
    assert isinstance(result.error.__context__, ConnectionError)
    assert result.attempts == 2
    assert len(calls) == 2


# -- not retried -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        ValueError("a bug in user code"),
        KeyError("missing"),
        http_error(400),
        http_error(401),
        http_error(404),
        http_error(422),
        UnexpectedModelBehavior("bad output"),
    ],
    ids=lambda e: f"{type(e).__name__}-{getattr(e, 'status_code', '')}",
)
async def test_non_retryable_model_errors_are_not_retried(error: Exception) -> None:
    model, calls = failing_then([error, error, error])
    agent = from_pydantic_ai(PydanticAgent(FunctionModel(model)))
    recorder = Recorder()
    options = RuntimeOptions(retry_max_attempts=3, **NO_WAIT)
    async with AgentRuntime(options=options, event_emitter=recorder) as runtime:
        result = await runtime.run(agent, TaskSpec(input="q"))
    assert result.error is error
    assert result.attempts == 1
    assert calls == [1]
    assert recorder.of(EventType.RETRY_SCHEDULED) == []
    assert not getattr(result.error, "__notes__", None)


async def test_input_validation_error_is_not_retried() -> None:
    model, calls = failing_then([])
    agent = murmur.Agent(name="typed", model=FunctionModel(model), input_type=int)
    async with AgentRuntime(options=RuntimeOptions(retry_max_attempts=3, **NO_WAIT)) as runtime:
        result = await runtime.run(agent, TaskSpec(input="not a number"))
    assert isinstance(result.error, InputValidationError)
    assert result.attempts == 1
    assert calls == []


async def test_a_bug_in_a_function_agent_is_not_retried() -> None:
    calls = 0

    async def buggy(value: int) -> int:
        nonlocal calls
        calls += 1
        return {"a": 1}["b"]

    async with AgentRuntime(options=RuntimeOptions(retry_max_attempts=3, **NO_WAIT)) as runtime:
        result = await runtime.run(buggy, TaskSpec(input=1))
    assert isinstance(result.error, KeyError)
    assert (result.attempts, calls) == (1, 1)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TimeoutError(), True),
        (AgentTimeoutError("attempt timed out"), True),
        (ConnectionError(), True),
        (ConnectionResetError(), True),
        (OSError("network is unreachable"), True),
        (http_error(408), True),
        (http_error(429), True),
        (http_error(500), True),
        (http_error(502), True),
        (http_error(503), True),
        (http_error(599), True),
        (ModelAPIError("test-model", "connection dropped"), True),
        (http_error(400), False),
        (http_error(401), False),
        (http_error(403), False),
        (http_error(404), False),
        (http_error(422), False),
        (ValueError(), False),
        (RuntimeError(), False),
        (UnexpectedModelBehavior("bad"), False),
        (InputValidationError("agent", []), False),
        (BudgetExceededError("spent"), False),
        (SpawnDepthExceededError("too deep"), False),
    ],
    ids=lambda v: (
        f"{type(v).__name__}-{getattr(v, 'status_code', '')}" if not isinstance(v, bool) else str(v)
    ),
)
def test_is_retryable_defaults(error: BaseException, expected: bool) -> None:
    assert is_retryable(error) is expected


# -- retry_on ------------------------------------------------------------------------------------


async def test_retry_on_types_replace_the_default() -> None:
    attempts: list[str] = []

    async def agent(value: str) -> str:
        attempts.append(value)
        if len(attempts) < 3:
            raise LookupError("not yet")
        return "found"

    async def flaky_network(value: str) -> str:
        attempts.append(value)
        raise ConnectionError("down")

    options = RuntimeOptions(retry_max_attempts=3, retry_on=(LookupError,), **NO_WAIT)
    async with AgentRuntime(options=options) as runtime:
        result = await runtime.run(agent, TaskSpec(input="x"))
        assert (result.output, result.attempts) == ("found", 3)
        attempts.clear()
        # ConnectionError is retryable by default, but not under this retry_on.
        failed = await runtime.run(flaky_network, TaskSpec(input="y"))
    assert isinstance(failed.error, ConnectionError)
    assert failed.attempts == 1


async def test_retry_on_predicate() -> None:
    calls = 0

    async def agent(value: int) -> int:
        nonlocal calls
        calls += 1
        raise RuntimeError("flaky" if calls < 3 else "fatal")

    def flaky_only(error: BaseException) -> bool:
        return "flaky" in str(error)

    options = RuntimeOptions(retry_max_attempts=10, retry_on=flaky_only, **NO_WAIT)
    async with AgentRuntime(options=options) as runtime:
        result = await runtime.run(agent, TaskSpec(input=1))
    assert str(result.error) == "fatal"
    assert result.attempts == 3


# -- backoff schedule --------------------------------------------------------------------------


def test_backoff_is_factor_to_the_k_minus_one_capped_by_max_delay() -> None:
    retry = RetryMiddleware(10, backoff_factor=2.0, max_delay=10.0, jitter=0.0)
    assert [retry.delay_after(k) for k in range(1, 8)] == [1, 2, 4, 8, 10, 10, 10]
    seed = RetryMiddleware(3, backoff_factor=1.5, max_delay=None, jitter=0.0)
    assert [seed.delay_after(k) for k in (1, 2, 3)] == [1.0, 1.5, 2.25]
    assert [RetryMiddleware(3, backoff_factor=0).delay_after(k) for k in (1, 2, 3)] == [0, 0, 0]
    assert RetryMiddleware(3, backoff_factor=3.0, max_delay=0.0).delay_after(4) == 0.0


def test_jitter_stays_within_its_bounds_and_under_the_cap() -> None:
    low = RetryMiddleware(5, backoff_factor=2.0, max_delay=100.0, jitter=0.25, rand=lambda: 0.0)
    high = RetryMiddleware(5, backoff_factor=2.0, max_delay=100.0, jitter=0.25, rand=lambda: 1.0)
    mid = RetryMiddleware(5, backoff_factor=2.0, max_delay=100.0, jitter=0.25, rand=lambda: 0.5)
    assert [low.delay_after(k) for k in (1, 2, 3)] == [0.75, 1.5, 3.0]
    assert [high.delay_after(k) for k in (1, 2, 3)] == [1.25, 2.5, 5.0]
    assert [mid.delay_after(k) for k in (1, 2, 3)] == [1.0, 2.0, 4.0]

    draws = random.Random(1234)
    spread = RetryMiddleware(9, backoff_factor=2.0, max_delay=20.0, jitter=0.5, rand=draws.random)
    for k in range(1, 9):
        base = min(2.0 ** (k - 1), 20.0)
        for _ in range(100):
            delay = spread.delay_after(k)
            assert base * 0.5 <= delay <= base * 1.5
            assert delay <= 20.0  # retry_max_delay caps each wait, jitter included


async def test_the_stage_waits_the_schedule_between_attempts() -> None:
    sleep = FakeSleep()
    retry = RetryMiddleware(5, backoff_factor=3.0, max_delay=20.0, jitter=0.0, sleep=sleep)
    model, calls = failing_then([ConnectionError(str(i)) for i in range(4)])
    agent = from_pydantic_ai(PydanticAgent(FunctionModel(model)))
    async with AgentRuntime(middleware=[retry]) as runtime:
        result = await runtime.run(agent, TaskSpec(input="q"))
    assert result.output == "done"
    assert result.attempts == 5
    assert sleep.delays == [1.0, 3.0, 9.0, 20.0]
    assert len(calls) == 5


async def test_no_wait_after_the_last_attempt_nor_after_a_non_retryable_error() -> None:
    sleep = FakeSleep()
    retry = RetryMiddleware(3, backoff_factor=2.0, jitter=0.0, sleep=sleep)

    async def down(value: int) -> int:
        raise ConnectionError("down")

    async def wrong(value: int) -> int:
        raise ValueError("wrong")

    async with AgentRuntime(middleware=[retry]) as runtime:
        assert (await runtime.run(down, TaskSpec(input=1))).attempts == 3
        assert sleep.delays == [1.0, 2.0]
        assert (await runtime.run(wrong, TaskSpec(input=1))).attempts == 1
    assert sleep.delays == [1.0, 2.0]


async def test_the_stage_called_directly_with_a_fake_call_next() -> None:
    sleep = FakeSleep()
    retry = RetryMiddleware(4, backoff_factor=2.0, jitter=0.5, rand=lambda: 0.0, sleep=sleep)
    outcomes: list[BaseException | str] = [TimeoutError("t1"), OSError("o2"), "ok"]
    seen: list[int] = []

    async def call_next(ctx: AgentContext) -> Any:
        seen.append(len(seen) + 1)
        outcome = outcomes[len(seen) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    class Ctx:
        """Just what RetryMiddleware touches: ``emit``."""

        def __init__(self) -> None:
            self.emitted: list[dict[str, Any]] = []

        async def emit(self, kind: EventType, **kwargs: Any) -> None:
            self.emitted.append({"type": kind, **kwargs})

    ctx = Ctx()
    assert await retry(ctx, call_next) == "ok"  # type: ignore[arg-type]
    assert seen == [1, 2, 3]
    assert sleep.delays == [0.5, 1.0]
    assert [e["data"] for e in ctx.emitted] == [
        {"delay": 0.5, "next_attempt": 2},
        {"delay": 1.0, "next_attempt": 3},
    ]


# -- Retry-After -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"Retry-After-Ms": "1500"}, 1.5),
        ({"Retry-After": "0"}, 1.0),  # asked for no wait: the backoff still applies
        ({"Retry-After": "not a date"}, 1.0),
        ({"Retry-After": "inf"}, 1.0),
        ({"Retry-After": email.utils.format_datetime(datetime.now(UTC), usegmt=True)}, 1.0),
    ],
)
async def test_retry_after_on_a_429_is_honoured(headers: dict[str, str], expected: float) -> None:
    sleep = FakeSleep()
    retry = RetryMiddleware(3, backoff_factor=2.0, jitter=0.0, sleep=sleep)
    model, calls = failing_then([http_error(429, headers=headers)])
    agent = from_pydantic_ai(PydanticAgent(FunctionModel(model)))
    async with AgentRuntime(middleware=[retry]) as runtime:
        result = await runtime.run(agent, TaskSpec(input="q"))
    assert result.output == "done"
    assert result.attempts == 2
    assert len(calls) == 2
    # The wait is the larger of the backoff (1 s after attempt 1) and what the server asked.
    assert sleep.delays == [pytest.approx(expected)]


async def test_retry_after_outranks_the_backoff_and_jitter_up_to_the_cap() -> None:
    sleep = FakeSleep()
    retry = RetryMiddleware(
        2, backoff_factor=2.0, max_delay=30.0, jitter=0.5, rand=lambda: 0.0, sleep=sleep
    )
    model, _ = failing_then([http_error(503, headers={"Retry-After": "30"})])
    agent = from_pydantic_ai(PydanticAgent(FunctionModel(model)))
    async with AgentRuntime(middleware=[retry]) as runtime:
        assert (await runtime.run(agent, TaskSpec(input="q"))).is_ok()
    assert sleep.delays == [30.0]


async def test_a_retry_after_beyond_max_delay_is_not_waited_for() -> None:
    """A day's Retry-After must not park a task (its slot, its tokens) for a day."""
    sleep = FakeSleep()
    rec = Recorder()
    retry = RetryMiddleware(3, max_delay=60.0, sleep=sleep)
    model, calls = failing_then([http_error(429, headers={"Retry-After": "86400"})])
    agent = from_pydantic_ai(PydanticAgent(FunctionModel(model)))
    async with AgentRuntime(middleware=[retry], event_emitter=rec) as runtime:
        result = await runtime.run(agent, TaskSpec(input="q"))
    assert isinstance(result.error, ModelHTTPError)
    assert result.attempts == 1
    assert len(calls) == 1
    assert sleep.delays == []
    assert rec.of(EventType.RETRY_SCHEDULED) == []
    assert any(
        "asked to wait 86400 s (Retry-After), more than retry_max_delay=60 s" in note
        for note in result.error.__notes__
    )


async def test_with_no_cap_any_retry_after_is_waited_for() -> None:
    sleep = FakeSleep()
    retry = RetryMiddleware(2, max_delay=None, jitter=0.0, sleep=sleep)
    model, _ = failing_then([http_error(429, headers={"Retry-After": "86400"})])
    agent = from_pydantic_ai(PydanticAgent(FunctionModel(model)))
    async with AgentRuntime(middleware=[retry]) as runtime:
        assert (await runtime.run(agent, TaskSpec(input="q"))).is_ok()
    assert sleep.delays == [86400.0]


async def test_retry_after_set_by_the_provider_without_headers_is_honoured() -> None:
    sleep = FakeSleep()
    retry = RetryMiddleware(2, backoff_factor=0.0, sleep=sleep)
    error = ModelHTTPError(429, "test-model", retry_after=4.0)
    model, _ = failing_then([error])
    agent = from_pydantic_ai(PydanticAgent(FunctionModel(model)))
    async with AgentRuntime(middleware=[retry]) as runtime:
        assert (await runtime.run(agent, TaskSpec(input="q"))).is_ok()
    assert sleep.delays == [4.0]


# -- cancellable waits ---------------------------------------------------------------------------


async def test_cancelling_during_a_backoff_wait_stops_the_task() -> None:
    waiting = anyio.Event()
    cancelled: list[str] = []

    async def long_sleep(delay: float) -> None:
        waiting.set()
        try:
            await anyio.Event().wait()  # never set: only cancellation ends the wait
        except anyio.get_cancelled_exc_class():
            cancelled.append("backoff wait cancelled")
            raise

    retry = RetryMiddleware(5, sleep=long_sleep)
    calls = 0

    async def down(value: int) -> int:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    returned: list[Any] = []
    async with AgentRuntime(middleware=[retry]) as runtime:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                returned.append(await runtime.run(down, TaskSpec(input=1)))

            tg.start_soon(run)
            await waiting.wait()
            tg.cancel_scope.cancel()
        # Nothing keeps running after the cancellation: no further attempt ever starts.
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
    assert cancelled == ["backoff wait cancelled"]
    assert returned == []
    assert calls == 1


async def test_cancelling_during_the_runtimes_own_backoff_wait() -> None:
    """With RuntimeOptions (the real ``anyio.sleep``) an hour's wait is cut short by cancel."""
    scheduled = anyio.Event()

    class Signal(Recorder):
        async def emit(self, event: RuntimeEvent) -> None:
            await super().emit(event)
            if event.type == EventType.RETRY_SCHEDULED:
                scheduled.set()

    recorder = Signal()

    calls = 0

    async def rate_limited(value: int) -> int:
        nonlocal calls
        calls += 1
        raise ModelHTTPError(429, "test-model", headers={"Retry-After": "3600"})

    options = RuntimeOptions(retry_max_attempts=3, retry_max_delay=None)
    async with AgentRuntime(options=options, event_emitter=recorder) as runtime:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(runtime.run, rate_limited, TaskSpec(input=1))
                await scheduled.wait()
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
    assert scope.cancelled_caught
    assert calls == 1
    (event,) = recorder.of(EventType.RETRY_SCHEDULED)
    assert event.data == {"delay": 3600.0, "next_attempt": 2}
    assert recorder.of(EventType.TASK_SUCCEEDED) == recorder.of(EventType.TASK_FAILED) == []


async def test_a_cancelled_attempt_is_not_retried() -> None:
    """Cancellation is not a failure: retry lets it through instead of trying again."""
    started = anyio.Event()
    calls = 0

    async def blocks(value: int) -> int:
        nonlocal calls
        calls += 1
        started.set()
        await anyio.Event().wait()
        return value

    options = RuntimeOptions(retry_max_attempts=5, retry_on=(BaseException,), **NO_WAIT)
    async with AgentRuntime(options=options) as runtime, anyio.create_task_group() as tg:
        tg.start_soon(runtime.run, blocks, TaskSpec(input=1))
        await started.wait()
        tg.cancel_scope.cancel()
    assert calls == 1


def test_huge_attempt_counts_do_not_overflow_the_backoff() -> None:
    stage = RetryMiddleware(2000, backoff_factor=2.0, max_delay=30.0, jitter=0.0)
    assert stage.delay_after(1500) == 30.0
    scaled = RetryMiddleware(2000, initial_delay=0.1, backoff_factor=2, max_delay=30.0)
    assert scaled.delay_after(1500) == 30.0
    assert RetryMiddleware(2000, initial_delay=0.0, max_delay=None).delay_after(1500) == 0.0


# -- initial delay ------------------------------------------------------------------------------


def test_initial_delay_is_the_first_wait_and_scales_the_whole_schedule() -> None:
    fast = RetryMiddleware(10, initial_delay=0.1, backoff_factor=2.0, max_delay=1.0, jitter=0.0)
    assert [fast.delay_after(k) for k in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    slow = RetryMiddleware(4, initial_delay=5.0, backoff_factor=1.5, max_delay=None, jitter=0.0)
    assert [slow.delay_after(k) for k in (1, 2, 3)] == [5.0, 7.5, 11.25]
    steady = RetryMiddleware(4, initial_delay=0.25, backoff_factor=1.0, jitter=0.0)
    assert [steady.delay_after(k) for k in (1, 2, 3)] == [0.25, 0.25, 0.25]
    for zero in (
        RetryMiddleware(3, initial_delay=0.0, backoff_factor=2.0),
        RetryMiddleware(3, initial_delay=0.5, backoff_factor=0.0),
    ):
        assert [zero.delay_after(k) for k in (1, 2, 3)] == [0.0, 0.0, 0.0]
    jittered = RetryMiddleware(3, initial_delay=0.1, jitter=0.5, rand=lambda: 1.0)
    assert jittered.delay_after(2) == pytest.approx(0.3)


def test_the_default_initial_delay_keeps_the_old_schedule() -> None:
    for factor in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0):
        default = RetryMiddleware(12, backoff_factor=factor, max_delay=None, jitter=0.0)
        assert default.initial_delay == 1.0
        expected = [factor ** (k - 1) if factor > 0 else 0.0 for k in range(1, 12)]
        assert [default.delay_after(k) for k in range(1, 12)] == expected


async def test_the_stage_waits_from_the_initial_delay_between_attempts() -> None:
    sleep = FakeSleep()
    retry = RetryMiddleware(
        4, initial_delay=0.1, backoff_factor=2.0, max_delay=None, jitter=0.0, sleep=sleep
    )
    recorder = Recorder()
    model, calls = failing_then([http_error(503, n=i) for i in range(3)])
    agent = murmur.Agent(name="flaky", model=FunctionModel(model))

    async def down_twice(value: int) -> int:
        if len(sleep.delays) < 5:
            raise ConnectionError("down")
        return value

    async with AgentRuntime(middleware=[retry], event_emitter=recorder) as runtime:
        result = await runtime.run(agent, TaskSpec(input="q"))
        assert result.output == "done"
        assert result.attempts == 4
        assert sleep.delays == [0.1, 0.2, 0.4]
        assert len(calls) == 4
        assert (await runtime.run(down_twice, TaskSpec(input=7))).unwrap() == 7
    assert sleep.delays == [0.1, 0.2, 0.4, 0.1, 0.2]
    scheduled = [e.data for e in recorder.of(EventType.RETRY_SCHEDULED)]
    assert [d["delay"] for d in scheduled] == [0.1, 0.2, 0.4, 0.1, 0.2]
    assert [d["next_attempt"] for d in scheduled] == [2, 3, 4, 2, 3]


async def test_an_attempt_after_a_failed_one_can_still_spawn_children() -> None:
    """Under Trio each attempt runs on the bridge; a failed attempt must not end the task."""
    calls = 0

    async def child(value: str) -> str:
        return value.upper()

    async def delegate(ctx: RunContext[AgentContext]) -> str:
        return (await ctx.deps.run(child, TaskSpec(input="from the child"))).unwrap()

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise http_error(503)  # attempt 1 fails before its tool ever runs
        last = messages[-1].parts[-1]
        if last.part_kind == "tool-return":
            return ModelResponse(parts=[TextPart(f"got {last.content}")])
        return ModelResponse(parts=[ToolCallPart("delegate", {})])

    agent = murmur.Agent(name="flaky", model=FunctionModel(model), tools=(delegate,))
    options = RuntimeOptions(retry_max_attempts=2, retry_backoff_factor=0)
    async with AgentRuntime(options=options) as runtime:
        result = await runtime.run(agent, TaskSpec(input="q"))
    assert result.unwrap() == "got FROM THE CHILD"
    assert result.attempts == 2
