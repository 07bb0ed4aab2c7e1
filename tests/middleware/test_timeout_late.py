"""An attempt that ends after its deadline is a timeout, on asyncio and Trio alike.

An agent that blocks the thread (``time.sleep``, CPU work, a blocking client) cannot be
cancelled while it blocks, and whether its late outcome came back used to depend on the
backend. Most tests here move the event loop's clock forward from inside the agent, which
is all such a block looks like to the loop, without the wait.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import sniffio
import trio
import trio.testing
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import murmur._executor as executor_module
from murmur import (
    AgentContext,
    AgentResult,
    AgentRuntime,
    AgentTimeoutError,
    EventType,
    RuntimeOptions,
    TaskSpec,
    from_pydantic_ai,
)
from murmur.middleware import TimeoutMiddleware
from support import Recorder

pytestmark = pytest.mark.anyio

TIMEOUT = 60.0
#: How long the agents "block": far past the deadline, and no real time spent.
BLOCK = 3600.0


class JumpingLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose clock can be moved forward by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Both backends, as in conftest, each with a clock that tests can move forward."""
    if request.param == "asyncio":
        return "asyncio", {"loop_factory": JumpingLoop}
    return "trio", {"clock": trio.testing.MockClock(rate=1.0)}


def clock_jumper() -> Callable[[float], None]:
    """Moves the running loop's clock forward, as a thread blocked that long would find it.

    Call it in the test; the function it returns works on the loop's thread, and under
    Trio also on the asyncio bridge's thread (where pydantic-ai agents run).
    """
    if sniffio.current_async_library() == "trio":
        clock = trio.lowlevel.current_clock()
        assert isinstance(clock, trio.testing.MockClock)
        token = trio.lowlevel.current_trio_token()
        home = threading.get_ident()

        def jump_trio(seconds: float) -> None:
            if threading.get_ident() == home:
                clock.jump(seconds)
            else:
                token.run_sync_soon(clock.jump, seconds)

        return jump_trio
    loop = asyncio.get_running_loop()
    assert isinstance(loop, JumpingLoop)

    def jump_asyncio(seconds: float) -> None:
        assert threading.get_ident() == loop_thread
        loop.offset += seconds

    loop_thread = threading.get_ident()
    return jump_asyncio


async def run_once(
    agent: Any, timeout: float = TIMEOUT, **options: Any
) -> tuple[AgentResult[Any], Recorder]:
    recorder = Recorder()
    runtime_options = RuntimeOptions(timeout_seconds=timeout, **options)
    async with AgentRuntime(options=runtime_options, event_emitter=recorder) as runtime:
        result = await runtime.run(agent, TaskSpec(input=1))
    return result, recorder


def assert_timed_out_once(result: AgentResult[Any], recorder: Recorder) -> None:
    assert isinstance(result.error, AgentTimeoutError), result
    assert result.attempts == 1
    (event,) = recorder.of(EventType.ATTEMPT_TIMED_OUT)
    assert event.data == {"timeout_seconds": TIMEOUT}
    (failed,) = recorder.of(EventType.TASK_FAILED)
    assert failed.error is not None
    assert failed.error.type == "AgentTimeoutError"


@pytest.mark.parametrize(
    "shape",
    [
        "blocks, then awaits, then returns",  # asyncio used to return it, Trio to time out
        "blocks, then returns",
        "awaits, then blocks, then returns",
        "blocks, then awaits, then raises",
    ],
)
async def test_an_attempt_that_ends_after_its_deadline_is_a_timeout(shape: str) -> None:
    jump = clock_jumper()
    steps = shape.split(", then ")

    async def agent(value: int) -> int:
        for step in steps:
            if step == "blocks":
                jump(BLOCK)
            elif step == "awaits":
                await anyio.lowlevel.checkpoint()
            elif step == "raises":
                raise ValueError("late")
        return value

    assert_timed_out_once(*await run_once(agent))


async def test_a_late_error_is_a_timeout_that_keeps_the_error_as_its_context() -> None:
    jump = clock_jumper()

    async def agent(value: int) -> int:
        jump(BLOCK)
        if value:
            raise ValueError("late")
        await anyio.lowlevel.checkpoint()  # never reached: only makes the agent suspendable
        return value

    result, recorder = await run_once(agent)
    assert_timed_out_once(result, recorder)
    assert isinstance(result.error, AgentTimeoutError)
    assert isinstance(result.error.__context__, ValueError)
    assert str(result.error.__context__) == "late"


async def test_an_attempt_that_ends_before_its_deadline_keeps_its_outcome() -> None:
    jump = clock_jumper()

    async def agent(value: int) -> int:
        jump(TIMEOUT / 2)  # slow, but within the deadline
        await anyio.lowlevel.checkpoint()
        if value < 0:
            raise ArithmeticError("negative")
        return value * 2

    recorder = Recorder()
    options = RuntimeOptions(timeout_seconds=TIMEOUT)
    async with AgentRuntime(options=options, event_emitter=recorder) as runtime:
        ok = await runtime.run(agent, TaskSpec(input=21))
        failed = await runtime.run(agent, TaskSpec(input=-1))
    assert ok.output == 42
    assert isinstance(failed.error, ArithmeticError)
    assert recorder.of(EventType.ATTEMPT_TIMED_OUT) == []


async def test_a_late_attempt_is_retried_like_any_timed_out_one_and_its_usage_counts() -> None:
    jump = clock_jumper()

    async def agent(value: int, ctx: AgentContext) -> int:
        ctx.report_usage(input_tokens=1, output_tokens=2)
        if ctx.attempt == 1:
            jump(BLOCK)
        await anyio.lowlevel.checkpoint()
        return ctx.attempt

    result, recorder = await run_once(agent, retry_max_attempts=2, retry_backoff_factor=0)
    assert result.output == 2
    assert result.attempts == 2
    assert result.usage.total_tokens == 6  # the late attempt's tokens were spent all the same
    (retry,) = recorder.of(EventType.RETRY_SCHEDULED)
    assert retry.error is not None
    assert retry.error.type == "AgentTimeoutError"


async def test_a_pydantic_ai_model_that_blocks_past_the_deadline_times_out() -> None:
    """Under Trio the model runs on the asyncio bridge; on asyncio it blocks the loop itself."""
    jump = clock_jumper()
    calls: list[str] = []

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append("model")
        jump(BLOCK)
        return ModelResponse(parts=[TextPart("too late")])

    agent = from_pydantic_ai(PydanticAgent(FunctionModel(model)), name="blocking-model")
    result, recorder = await run_once(agent)
    assert calls == ["model"]
    assert_timed_out_once(result, recorder)


async def test_a_real_block_of_the_thread_times_out() -> None:
    """The same with ``time.sleep``: the block always outlasts the deadline many times over."""

    async def agent(value: int) -> int:
        time.sleep(0.05)
        await anyio.lowlevel.checkpoint()
        return value

    result, _ = await run_once(agent, timeout=0.001)
    assert isinstance(result.error, AgentTimeoutError)


# -- the stage on its own ---------------------------------------------------------------


class Ctx:
    agent = "direct"
    attempt = 1

    def __init__(self) -> None:
        self.emitted: list[tuple[EventType, Any]] = []

    async def emit(self, kind: EventType, **kwargs: Any) -> None:
        self.emitted.append((kind, kwargs.get("data")))


async def test_the_stage_called_directly_fails_a_late_outcome() -> None:
    jump = clock_jumper()
    stage = TimeoutMiddleware(TIMEOUT)

    async def late(ctx: Any) -> str:
        jump(BLOCK)
        return "too late"

    ctx = Ctx()
    with pytest.raises(AgentTimeoutError):
        await stage(ctx, late)  # type: ignore[arg-type]
    assert ctx.emitted == [(EventType.ATTEMPT_TIMED_OUT, {"timeout_seconds": TIMEOUT})]


async def test_an_agent_that_never_awaits_and_ends_late_times_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Such an agent runs without a scope (nothing could cancel it), but the rule holds."""
    now = [1000.0]
    monkeypatch.setattr(executor_module, "perf_counter", lambda: now[0])

    async def blocks(value: int) -> float:
        now[0] += BLOCK
        return anyio.current_effective_deadline()

    async def quick(value: int) -> float:
        now[0] += TIMEOUT / 2
        return anyio.current_effective_deadline()

    assert_timed_out_once(*await run_once(blocks))
    result, _ = await run_once(quick)
    assert result.output == math.inf  # still no scope around it
