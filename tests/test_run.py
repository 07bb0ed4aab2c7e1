"""AgentRuntime.run: one task in, one AgentResult out; cancellation is never a result."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import murmur
from murmur import AgentContext, AgentResult, AgentRuntime, TaskSpec, Usage
from support import cancel_when_ready

pytestmark = pytest.mark.anyio


async def test_run_returns_the_agent_output(runtime: AgentRuntime) -> None:
    async def greet(name: str) -> str:
        return f"hello {name}"

    spec = TaskSpec(input="ada", task_id="greet-1")
    result = await runtime.run(greet, spec)
    assert isinstance(result, AgentResult)
    assert result.is_ok()
    assert result.output == "hello ada"
    assert result.unwrap() == "hello ada"
    assert result.task_id == "greet-1"
    assert result.agent == "greet"
    assert result.attempts == 1
    assert result.duration >= 0.0
    assert result.usage == Usage()


async def test_run_of_an_agent_returning_none_is_ok(runtime: AgentRuntime) -> None:
    async def nothing(value: object) -> None:
        return None

    result = await runtime.run(nothing, TaskSpec(input=1))
    assert result.is_ok()
    assert result.unwrap() is None


async def test_agent_failure_is_a_result_not_an_exception(runtime: AgentRuntime) -> None:
    async def fails(value: int) -> int:
        raise ArithmeticError(f"cannot handle {value}")

    result = await runtime.run(fails, TaskSpec(input=3, task_id="bad"))
    assert not result.is_ok()
    assert isinstance(result.error, ArithmeticError)
    assert str(result.error) == "cannot handle 3"
    assert result.output is None
    assert result.task_id == "bad"
    with pytest.raises(ArithmeticError, match="cannot handle 3"):
        result.unwrap()


async def test_run_requires_a_taskspec(runtime: AgentRuntime) -> None:
    async def echo(value: object) -> object:
        return value

    with pytest.raises(TypeError, match=r"TaskSpec\(input=\.\.\.\)"):
        await runtime.run(echo, "not a task")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="TaskSpec"):
        await runtime.run(echo, {"input": 1})  # type: ignore[arg-type]


async def test_a_base_exception_from_an_agent_is_not_swallowed(runtime: AgentRuntime) -> None:
    class Fatal(BaseException):
        pass

    async def fatal(value: object) -> None:
        raise Fatal

    with pytest.raises(Fatal):
        await runtime.run(fatal, TaskSpec(input=1))


async def test_concurrent_runs_on_one_runtime_are_independent(runtime: AgentRuntime) -> None:
    arrived = 0
    all_arrived = anyio.Event()
    results: dict[int, AgentResult[Any]] = {}

    async def meet(value: int) -> int:
        nonlocal arrived
        arrived += 1
        if arrived == 5:
            all_arrived.set()
        await all_arrived.wait()  # all five run at the same time
        if value == 2:
            raise ValueError("two")
        return value * value

    async def one(i: int) -> None:
        results[i] = await runtime.run(meet, TaskSpec(input=i))

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(one, i)
    assert {i: r.output for i, r in results.items() if r.is_ok()} == {0: 0, 1: 1, 3: 9, 4: 16}
    assert isinstance(results[2].error, ValueError)


async def test_each_run_gets_its_own_context_and_trace(runtime: AgentRuntime) -> None:
    seen: list[AgentContext] = []

    async def record(value: int, ctx: AgentContext) -> int:
        seen.append(ctx)
        return value

    await runtime.run(record, TaskSpec(input=1))
    await runtime.run(record, TaskSpec(input=2))
    assert seen[0] is not seen[1]
    assert seen[0].trace_id != seen[1].trace_id
    assert [c.task.input for c in seen] == [1, 2]


# -- cancellation ----------------------------------------------------------------------------


async def test_cancelling_the_caller_cancels_the_agent_and_propagates(
    runtime: AgentRuntime,
) -> None:
    started = anyio.Event()
    cleaned_up: list[str] = []
    after_wait: list[str] = []

    async def blocks(value: str) -> str:
        started.set()
        try:
            await anyio.Event().wait()  # never set: only cancellation ends this
            after_wait.append(value)
            return value
        finally:
            cleaned_up.append(value)

    outcome = await cancel_when_ready(
        lambda: runtime.run(blocks, TaskSpec(input="x")), started.wait
    )

    assert outcome.cancelled_caught
    assert len(outcome.propagated) == 1  # run() raised the backend's cancellation exception
    assert outcome.returned == []  # ... and never turned it into a result
    assert cleaned_up == ["x"]  # the agent was cancelled and ran its clean-up
    assert after_wait == []


async def test_cancelling_the_caller_cancels_a_pydantic_ai_agent(runtime: AgentRuntime) -> None:
    started = threading.Event()
    states: list[str] = []
    returned: list[AgentResult[Any]] = []

    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        started.set()
        try:
            await anyio.Event().wait()  # never set
            states.append("finished")
        finally:
            states.append("cleaned up")
        return ModelResponse(parts=[TextPart("never")])

    agent = murmur.Agent(name="stuck", model=FunctionModel(model_fn))

    async def caller() -> None:
        returned.append(await runtime.run(agent, TaskSpec(input="x")))

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            assert await anyio.to_thread.run_sync(started.wait, 30)
            scope.cancel()

    assert scope.cancelled_caught
    assert returned == []
    assert states == ["cleaned up"]


async def test_an_agent_cancelling_its_own_scope_is_not_a_cancellation(
    runtime: AgentRuntime,
) -> None:
    async def gives_up_on_a_step(value: str) -> str:
        with anyio.CancelScope() as inner:
            inner.cancel()
            await anyio.Event().wait()
        return f"{value} survived"

    result = await runtime.run(gives_up_on_a_step, TaskSpec(input="run"))
    assert result.unwrap() == "run survived"


async def test_run_with_a_pydantic_ai_agent_and_a_function_agent_side_by_side(
    runtime: AgentRuntime,
) -> None:
    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart("from model")])

    async def fn(value: str) -> str:
        return "from function"

    results: list[str] = []

    async def one(agent: Any) -> None:
        results.append((await runtime.run(agent, TaskSpec(input="q"))).unwrap())

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, PydanticAgent(FunctionModel(model_fn)))
        tg.start_soon(one, fn)
    assert sorted(results) == ["from function", "from model"]


async def test_a_context_spawns_nothing_once_its_task_is_over(runtime: AgentRuntime) -> None:
    kept: list[AgentContext] = []

    async def child(value: int) -> int:
        return value

    async def parent(value: int, ctx: AgentContext) -> int:
        kept.append(ctx)
        return (await ctx.run(child, TaskSpec(input=value))).unwrap()  # while running: fine

    assert (await runtime.run(parent, TaskSpec(input=3, task_id="p"))).unwrap() == 3
    (ctx,) = kept
    # Something the agent left behind (a background task, a callback) tries it later.
    with pytest.raises(RuntimeError, match=r"task 'p' of agent 'parent' is over"):
        await ctx.run(child, TaskSpec(input=4))
    with pytest.raises(RuntimeError, match="only while its task runs"):
        await ctx.gather(child, [TaskSpec(input=5)])
    from murmur import AgentGroup, Edge

    group = AgentGroup(name="g", topology={child: Edge.terminal()})
    with pytest.raises(RuntimeError, match="is over"):
        await ctx.run_group(group, TaskSpec(input=6))
