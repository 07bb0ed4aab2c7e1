"""What a user sees through the transport seam is what the in-process runtime gives.

``tests/transport/test_seam.py`` states the rule: "What a user sees must be what the
in-process runtime gives." These runs check it: the same runtime options, agents and
group give the same outcome once attempts go through ``LoopbackTransport``.
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from pydantic import BaseModel
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.models.test import TestModel

from murmur import (
    AgentGroup,
    AgentRuntime,
    BudgetExceededError,
    Edge,
    EventType,
    FanOut,
    FunctionAgent,
    RuntimeOptions,
    TaskSpec,
    TokenBudget,
    from_pydantic_ai,
)
from murmur.transport import Executor, LocalTransport, LoopbackTransport
from support import Recorder

pytestmark = pytest.mark.anyio


class Point(BaseModel):
    x: int
    y: int


async def swap(point: Point) -> Point:
    return Point(x=point.y, y=point.x)


def through_the_seam(*functions: Any) -> LoopbackTransport:
    impls = [FunctionAgent(f) for f in functions]
    return LoopbackTransport(Executor(agents={impl.name: impl for impl in impls}))


async def test_a_model_output_comes_back_as_the_model() -> None:
    async with AgentRuntime() as runtime:
        local = await runtime.run(swap, TaskSpec(input=Point(x=1, y=2)))
    async with AgentRuntime(transport=through_the_seam(swap)) as runtime:
        remote = await runtime.run(swap, TaskSpec(input=Point(x=1, y=2)))
    assert local.output == Point(x=2, y=1)
    # Over the seam the caller gets {'x': 2, 'y': 1}: the agent's declared output type is lost.
    assert remote.output == local.output


class Parts(BaseModel):
    parts: FanOut[list[str]]


async def split(text: str) -> Parts:
    return Parts(parts=text.split())


async def shout(part: str) -> str:
    return part.upper()


async def join(parts: list[str]) -> str:
    return "-".join(parts)


async def test_a_fanned_out_group_runs_through_the_seam_as_in_process() -> None:
    group = AgentGroup(
        name="g",
        topology={split: Edge(to=(shout,)), shout: Edge(to=(join,)), join: Edge.terminal()},
    )
    async with AgentRuntime() as runtime:
        local = await runtime.run_group(group, TaskSpec(input="a b c"))
    async with AgentRuntime(transport=through_the_seam(split, shout, join)) as runtime:
        remote = await runtime.run_group(group, TaskSpec(input="a b c"))
    assert local.output == "A-B-C"
    # Over the seam `split`'s Parts comes back a dict: no FanOut, `shout` gets the whole dict.
    assert remote.status == local.status
    assert remote.output == local.output


async def test_default_retry_retries_a_timed_out_attempt_through_the_seam() -> None:
    calls = 0

    async def slow_once(text: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep_forever()
        return text

    # The docs: AgentTimeoutError is a TimeoutError, so retry treats it as retryable by default.
    options = RuntimeOptions(timeout_seconds=0.01, retry_max_attempts=2, retry_backoff_factor=0)
    async with AgentRuntime(options=options, transport=through_the_seam(slow_once)) as runtime:
        with anyio.fail_after(30):
            result = await runtime.run(slow_once, TaskSpec(input="x"))
    assert (result.output, result.attempts) == ("x", 2), result.error


async def test_a_budget_refusal_through_the_seam_is_a_budget_error_with_its_event() -> None:
    agent = from_pydantic_ai(PydanticAgent(TestModel()), name="model")
    events = Recorder()
    runtime = AgentRuntime(
        options=RuntimeOptions(token_budget=TokenBudget(limit=5, reserve_per_task=5)),
        transport=LoopbackTransport(Executor(agents={"model": agent})),
        event_emitter=events,
    )
    async with runtime:
        result = await runtime.run(agent, TaskSpec(input="a long enough prompt to pass five"))
    # In-process: BudgetExceededError and a budget.exceeded event. Over the seam: a
    # RemoteAgentError and no event (the caller-side budget stage never recognises it).
    assert events.of(EventType.BUDGET_EXCEEDED)
    assert isinstance(result.error, BudgetExceededError)


async def test_closing_the_runtime_stops_the_bridge_of_its_local_transports_executor() -> None:
    agent = from_pydantic_ai(PydanticAgent(TestModel()), name="model")
    before = {t for t in threading.enumerate() if t.name.startswith("murmur-")}
    async with AgentRuntime(transport=LocalTransport(Executor(agents={"model": agent}))) as rt:
        result = await rt.run(agent, TaskSpec(input="hi"))
    leaked = [t for t in threading.enumerate() if t.name.startswith("murmur-") and t not in before]
    assert result.is_ok()
    # Under Trio the executor started its own bridge; LocalTransport.aclose leaves it running.
    assert leaked == []
