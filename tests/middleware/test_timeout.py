"""TimeoutMiddleware: a per-attempt deadline that really cancels the attempt, on both backends."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import murmur
from murmur import (
    AgentContext,
    AgentError,
    AgentRuntime,
    AgentTimeoutError,
    EventType,
    MurmurError,
    RuntimeOptions,
    TaskSpec,
    from_pydantic_ai,
)
from murmur.middleware import TimeoutMiddleware
from support import Recorder

pytestmark = pytest.mark.anyio

#: Tiny, because the attempts that hit it wait on an Event that is never set.
TINY = 0.05
#: For attempts that must get a pydantic-ai run going before they hang (tens of ms under load).
MODEL_TIMEOUT = 0.5


def relax(runtime: AgentRuntime) -> None:
    """Give the runtime's later attempts a generous deadline, so that they never race it."""
    (stage,) = [s for s in runtime._stages if isinstance(s, TimeoutMiddleware)]
    stage.seconds = 60.0


def test_agent_timeout_error_is_a_timeout_error() -> None:
    assert issubclass(AgentTimeoutError, TimeoutError)
    assert issubclass(AgentTimeoutError, AgentError)
    assert issubclass(AgentTimeoutError, MurmurError)
    assert murmur.AgentTimeoutError is AgentTimeoutError


async def test_a_timed_out_attempt_is_retried_and_the_second_succeeds() -> None:
    attempts: list[int] = []

    async def first_hangs(value: str, ctx: AgentContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            await anyio.Event().wait()  # never set: only the deadline ends this attempt
        return f"answered {value}"

    recorder = Recorder()
    options = RuntimeOptions(timeout_seconds=TINY, retry_max_attempts=2, retry_backoff_factor=0)
    async with AgentRuntime(options=options, event_emitter=recorder) as runtime:
        result = await runtime.run(first_hangs, TaskSpec(input="q"))
    assert result.is_ok(), result.error
    assert result.output == "answered q"
    assert result.attempts == 2
    assert attempts == [1, 2]
    (timed_out,) = recorder.of(EventType.ATTEMPT_TIMED_OUT)
    assert timed_out.attempt == 1
    assert timed_out.data == {"timeout_seconds": TINY}
    (retry,) = recorder.of(EventType.RETRY_SCHEDULED)
    assert retry.error is not None
    assert retry.error.type == "AgentTimeoutError"


async def test_a_timeout_without_retry_is_the_tasks_error() -> None:
    async def hangs(value: int) -> int:
        await anyio.Event().wait()
        return value

    async with AgentRuntime(options=RuntimeOptions(timeout_seconds=TINY)) as runtime:
        result = await runtime.run(hangs, TaskSpec(input=1))
    assert isinstance(result.error, AgentTimeoutError)
    assert isinstance(result.error, TimeoutError)
    assert "hangs" in str(result.error)
    assert "timed out" in str(result.error)
    assert result.attempts == 1


async def test_every_attempt_timing_out_exhausts_the_retries_with_a_chain() -> None:
    async def hangs(value: int) -> int:
        await anyio.Event().wait()
        return value

    options = RuntimeOptions(timeout_seconds=TINY, retry_max_attempts=3, retry_backoff_factor=0)
    async with AgentRuntime(options=options) as runtime:
        result = await runtime.run(hangs, TaskSpec(input=1))
    assert isinstance(result.error, AgentTimeoutError)
    assert result.attempts == 3
    assert "attempt 3" in str(result.error)
    earlier = result.error.__context__
    assert isinstance(earlier, AgentTimeoutError)
    assert "attempt 2" in str(earlier)
    assert isinstance(earlier.__context__, AgentTimeoutError)


async def test_each_attempt_gets_its_own_deadline() -> None:
    deadlines: list[float] = []
    seen_at: list[float] = []

    async def agent(value: int, ctx: AgentContext) -> int:
        deadlines.append(anyio.current_effective_deadline())
        seen_at.append(anyio.current_time())
        if ctx.attempt == 1:
            await anyio.Event().wait()
        return value

    options = RuntimeOptions(timeout_seconds=TINY, retry_max_attempts=2, retry_backoff_factor=0)
    async with AgentRuntime(options=options) as runtime:
        assert (await runtime.run(agent, TaskSpec(input=1))).attempts == 2
    first, second = deadlines
    assert math.isfinite(first)
    assert math.isfinite(second)
    # The second attempt's deadline was set when it started, after the first one expired.
    assert second > first
    assert second <= seen_at[1] + TINY


async def test_the_model_call_is_really_cancelled_on_timeout() -> None:
    """A pydantic-ai model call hanging forever is cancelled (across the bridge under Trio)."""
    log: list[str] = []
    calls = 0

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            log.append("model call started")
            try:
                await anyio.Event().wait()  # never set
            except BaseException as exc:
                log.append(f"cancelled: {type(exc).__name__}")
                raise
            finally:
                log.append("model call finished")
                relax(runtime)
        return ModelResponse(parts=[TextPart("second attempt")])

    agent = from_pydantic_ai(PydanticAgent(FunctionModel(model)), name="hanging-model")
    options = RuntimeOptions(
        timeout_seconds=MODEL_TIMEOUT, retry_max_attempts=2, retry_backoff_factor=0
    )
    async with AgentRuntime(options=options) as runtime:
        result = await runtime.run(agent, TaskSpec(input="q"))
        # By the time run returned, the hanging call had been cancelled and had finished.
        assert log == ["model call started", "cancelled: CancelledError", "model call finished"]
    assert result.output == "second attempt"
    assert result.attempts == 2


async def test_a_hanging_tool_of_a_murmur_agent_is_cancelled_on_timeout() -> None:
    log: list[str] = []

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1].parts[-1]
        if last.part_kind == "tool-return":
            return ModelResponse(parts=[TextPart(str(last.content))])
        return ModelResponse(parts=[ToolCallPart("slow_lookup", {})])

    async def slow_lookup() -> str:
        log.append("tool started")
        try:
            await anyio.Event().wait()
        finally:
            log.append("tool cancelled")
        return "never"

    agent = murmur.Agent(name="tooling", model=FunctionModel(model), tools=(slow_lookup,))
    async with AgentRuntime(options=RuntimeOptions(timeout_seconds=MODEL_TIMEOUT)) as runtime:
        result = await runtime.run(agent, TaskSpec(input="q"))
        assert log == ["tool started", "tool cancelled"]
    assert isinstance(result.error, AgentTimeoutError)
    assert result.attempts == 1


async def test_fast_attempts_and_their_errors_pass_through_untouched() -> None:
    async def quick(value: int) -> int:
        await anyio.lowlevel.checkpoint()
        if value < 0:
            raise ArithmeticError("negative")
        return value * 2

    async with AgentRuntime(options=RuntimeOptions(timeout_seconds=30.0)) as runtime:
        ok = await runtime.run(quick, TaskSpec(input=21))
        failed = await runtime.run(quick, TaskSpec(input=-1))
    assert (ok.output, ok.attempts) == (42, 1)
    assert isinstance(failed.error, ArithmeticError)
    assert not isinstance(failed.error, TimeoutError)


async def test_an_outer_cancellation_is_not_turned_into_a_timeout() -> None:
    started = anyio.Event()
    log: list[str] = []
    returned: list[Any] = []

    async def hangs(value: int) -> int:
        started.set()
        try:
            await anyio.Event().wait()
        finally:
            log.append("agent cancelled")
        return value

    runtime = AgentRuntime(options=RuntimeOptions(timeout_seconds=3600.0))

    async def run() -> None:
        returned.append(await runtime.run(hangs, TaskSpec(input=1)))

    async with runtime, anyio.create_task_group() as tg:
        tg.start_soon(run)
        await started.wait()
        tg.cancel_scope.cancel()
    assert log == ["agent cancelled"]
    assert returned == []  # cancelled, not an AgentTimeoutError result


async def test_timeout_stage_called_directly() -> None:
    stage = TimeoutMiddleware(TINY)

    class Ctx:
        agent = "direct"
        attempt = 1

        def __init__(self) -> None:
            self.emitted: list[EventType] = []

        async def emit(self, kind: EventType, **kwargs: Any) -> None:
            self.emitted.append(kind)

    async def hangs(ctx: Any) -> Any:
        await anyio.Event().wait()

    async def quick(ctx: Any) -> Any:
        return "fine"

    ctx = Ctx()
    assert await stage(ctx, quick) == "fine"  # type: ignore[arg-type]
    assert ctx.emitted == []
    with pytest.raises(AgentTimeoutError, match="'direct' attempt 1 timed out"):
        await stage(ctx, hangs)  # type: ignore[arg-type]
    assert ctx.emitted == [EventType.ATTEMPT_TIMED_OUT]


# -- agents that cannot suspend run without a scope -------------------------------------


async def _never_awaits(value: int) -> dict[str, float]:
    return {"deadline": anyio.current_effective_deadline(), "value": value}


async def _awaits_once(value: int) -> dict[str, float]:
    await anyio.lowlevel.checkpoint()
    return {"deadline": anyio.current_effective_deadline(), "value": value}


def test_may_suspend_reads_the_code_of_the_function() -> None:
    import functools
    import types

    from murmur._agents import may_suspend

    async def uses_async_with(value: Any) -> Any:
        async with anyio.Lock():
            return value

    async def uses_async_for(value: Any) -> Any:
        return [item async for item in value]

    @types.coroutine
    def old_style() -> Any:
        yield

    class Callable:
        async def __call__(self, value: Any) -> Any:
            return value

        async def method(self, value: Any) -> Any:
            return value

    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        async def wrapper(value: Any) -> Any:
            return await fn(value)

        return wrapper

    assert not may_suspend(_never_awaits)
    assert not may_suspend(functools.partial(_never_awaits, 1))
    assert not may_suspend(Callable().method)
    assert may_suspend(_awaits_once)
    assert may_suspend(uses_async_with)
    assert may_suspend(uses_async_for)
    assert may_suspend(old_style)  # a generator-based coroutine: not inspected
    assert may_suspend(Callable())  # a callable object: not inspected
    assert may_suspend(wrap(_never_awaits))  # the wrapper awaits


async def test_an_agent_that_never_awaits_skips_the_scope_and_one_that_awaits_keeps_it() -> None:
    options = RuntimeOptions(timeout_seconds=30.0)
    async with AgentRuntime(options=options) as runtime:
        never = await runtime.run(_never_awaits, TaskSpec(input=1))
        awaits = await runtime.run(_awaits_once, TaskSpec(input=2))
    assert never.error is None
    assert awaits.error is None
    # No scope around code with no checkpoint: nothing could have cancelled it anyway.
    assert never.output["deadline"] == math.inf
    assert math.isfinite(awaits.output["deadline"])


async def test_the_scope_stays_when_a_stage_runs_between_the_timeout_and_the_agent() -> None:
    """A user who puts TimeoutMiddleware outside their own stage still gets the deadline."""

    class Hangs:
        async def __call__(self, ctx: AgentContext, call_next: Any) -> Any:
            await anyio.Event().wait()  # never set: only the deadline ends this attempt

    runtime = AgentRuntime(middleware=[TimeoutMiddleware(TINY), Hangs()])
    async with runtime:
        result = await runtime.run(_never_awaits, TaskSpec(input=1))
    assert isinstance(result.error, AgentTimeoutError)


async def test_a_never_awaiting_agent_is_still_retried_and_charged_as_usual() -> None:
    calls: list[int] = []

    async def flaky(value: int, ctx: AgentContext) -> int:
        calls.append(value)
        ctx.report_usage(input_tokens=3, output_tokens=4)
        if len(calls) < 2:
            raise ConnectionError("transient")
        return value

    budget = murmur.TokenBudget(limit=1000)
    options = RuntimeOptions(
        timeout_seconds=30.0, retry_max_attempts=3, retry_backoff_factor=0, token_budget=budget
    )
    async with AgentRuntime(options=options) as runtime:
        result = await runtime.run(flaky, TaskSpec(input=5))
    assert result.output == 5
    assert result.attempts == 2
    assert budget.used == 14
    assert budget.reserved == 0
