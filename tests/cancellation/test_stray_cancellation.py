"""A cancellation no cancel scope of the task sent is that task's failure, nothing more.

An agent that awaits a future or task someone else cancelled (a shared in-flight request,
a single-flight cache) receives ``asyncio.CancelledError`` without being cancelled. On
Trio a library may raise one too. Either way: one error result, the batch goes on.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
from pydantic import BaseModel
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from murmur import (
    AgentGroup,
    AgentRuntime,
    Edge,
    EventType,
    FanOut,
    RuntimeOptions,
    StrayCancellationError,
    TaskSpec,
    from_pydantic_ai,
)
from support import Recorder, cancel_when_ready, stray_cancellation

pytestmark = pytest.mark.anyio

HANG_GUARD = 30


async def test_a_stray_cancellation_fails_one_slot_and_the_batch_goes_on() -> None:
    async def agent(n: int) -> int:
        await anyio.lowlevel.checkpoint()
        if n == 100:
            await stray_cancellation()
        return n

    events = Recorder()
    async with AgentRuntime(event_emitter=events) as runtime:
        with anyio.fail_after(HANG_GUARD):
            results = await runtime.gather(
                agent, [TaskSpec(input=n) for n in range(1000)], max_concurrency=10
            )
    assert all(r is not None for r in results)
    failed = [i for i, r in enumerate(results) if not r.is_ok()]
    assert failed == [100]
    error = results[100].error
    assert isinstance(error, StrayCancellationError)
    assert isinstance(error.__cause__, asyncio.CancelledError)
    assert [r.output for i, r in enumerate(results) if i != 100] == [
        n for n in range(1000) if n != 100
    ]
    (completed,) = events.of(EventType.BATCH_COMPLETED)
    assert completed.data == {"size": 1000, "succeeded": 999, "failed": 1}
    assert not events.of(EventType.TASK_CANCELLED)


async def test_a_stray_cancellation_in_a_pydantic_ai_model_is_a_failure_not_a_closed_runtime() -> (
    None
):
    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        # Runs on asyncio on both backends (under Trio, on the runtime's bridge loop).
        prompt = messages[0].parts[-1].content  # type: ignore[union-attr]
        if prompt == "3":
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            await future
        return ModelResponse(parts=[TextPart(f"ok {prompt}")])

    agent = from_pydantic_ai(PydanticAgent(FunctionModel(model)), name="shared-cache")
    async with AgentRuntime() as runtime:
        with anyio.fail_after(HANG_GUARD):
            results = await runtime.gather(agent, [TaskSpec(input=str(n)) for n in range(8)])
        # The runtime (and its bridge) is still fine afterwards.
        again = await runtime.run(agent, TaskSpec(input="after"))
    assert [r.is_ok() for r in results] == [n != 3 for n in range(8)]
    assert isinstance(results[3].error, StrayCancellationError)
    assert "shared-cache" in str(results[3].error)
    assert again.output == "ok after"


async def test_a_stray_cancellation_is_not_retried_by_default_but_can_be() -> None:
    calls = 0

    async def agent(value: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await stray_cancellation()
        return value

    options = RuntimeOptions(retry_max_attempts=3, retry_backoff_factor=0)
    async with AgentRuntime(options=options) as runtime:
        result = await runtime.run(agent, TaskSpec(input="x"))
    assert isinstance(result.error, StrayCancellationError)
    assert result.attempts == 1

    calls = 0
    options = RuntimeOptions(
        retry_max_attempts=3, retry_backoff_factor=0, retry_on=(StrayCancellationError,)
    )
    async with AgentRuntime(options=options) as runtime:
        result = await runtime.run(agent, TaskSpec(input="x"))
    assert (result.output, result.attempts) == ("x", 2)


async def test_a_stray_cancellation_in_a_stage_fails_that_task_only() -> None:
    class Cache:
        async def __call__(self, ctx: Any, call_next: Any) -> Any:
            if ctx.task.input == 2:
                await stray_cancellation()
            return await call_next(ctx)

    async def agent(n: int) -> int:
        return n

    async with AgentRuntime(middleware=[Cache()]) as runtime:
        results = await runtime.gather(agent, [TaskSpec(input=n) for n in range(5)])
    assert [r.is_ok() for r in results] == [True, True, False, True, True]
    assert isinstance(results[2].error, StrayCancellationError)


async def test_a_stray_cancellation_in_a_group_node_fails_that_slot_only() -> None:
    async def shout(part: str) -> str:
        if part == "b":
            await stray_cancellation()
        return part.upper()

    async def join(parts: list[str]) -> str:
        return "-".join(parts)

    class Parts(BaseModel):
        parts: FanOut[list[str]]

    async def split_typed(text: str) -> Parts:
        return Parts(parts=text.split())

    group = AgentGroup(
        name="g",
        topology={
            split_typed: Edge(to=(shout,)),
            shout: Edge(to=(join,)),
            join: Edge.terminal(),
        },
    )
    async with AgentRuntime() as runtime:
        with anyio.fail_after(HANG_GUARD):
            result = await runtime.run_group(group, TaskSpec(input="a b c"))
    assert result.output == "A-C"
    slots = result.slots["shout"]
    assert [s.is_ok() for s in slots] == [True, False, True]
    assert isinstance(slots[1].error, StrayCancellationError)


async def test_real_cancellation_of_the_caller_still_propagates() -> None:
    started = anyio.Event()

    async def agent(n: int) -> int:
        if n == 0:
            started.set()
        await anyio.sleep_forever()
        return n

    async with AgentRuntime() as runtime:
        outcome = await cancel_when_ready(
            lambda: runtime.gather(agent, [TaskSpec(input=n) for n in range(20)]),
            started.wait,
        )
    assert outcome.returned == []
    assert len(outcome.propagated) == 1
    assert outcome.cancelled_caught
