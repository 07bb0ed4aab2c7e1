"""Spawning and depth: ctx.run / ctx.gather one level deeper, max_spawn_depth, cancellation."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import murmur
from murmur import (
    AgentContext,
    AgentResult,
    AgentRuntime,
    EventType,
    RuntimeOptions,
    SpawnDepthExceededError,
    TaskSpec,
    TokenBudget,
    current_context,
    from_pydantic_ai,
)
from murmur.middleware import DepthLimitMiddleware
from support import Recorder

pytestmark = pytest.mark.anyio


def delegating_model(tool: str) -> FunctionModel:
    """A model that calls ``tool`` once (argument ``levels``: the prompt), then answers with
    what the tool returned."""

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1].parts[-1]
        if last.part_kind == "tool-return":
            return ModelResponse(parts=[TextPart(str(last.content))])
        prompt = next(p.content for m in messages for p in m.parts if p.part_kind == "user-prompt")
        return ModelResponse(parts=[ToolCallPart(tool, {"levels": int(str(prompt))})])

    return FunctionModel(model)


def describe(result: AgentResult[Any]) -> str:
    if result.error is not None:
        return f"{type(result.error).__name__}"
    return str(result.output)


# -- through ctx.run from inside a function agent ----------------------------------------------


@pytest.mark.parametrize("limit", [0, 1, 2, 4])
async def test_depth_n_runs_and_n_plus_one_is_refused(limit: int) -> None:
    reached: list[int] = []

    async def dive(levels: int, ctx: AgentContext) -> str:
        reached.append(ctx.depth)
        if levels == 0:
            return f"bottom at {ctx.depth}"
        child = await ctx.run(dive, TaskSpec(input=levels - 1, task_id=f"d{ctx.depth + 1}"))
        return describe(child)

    recorder = Recorder()
    options = RuntimeOptions(max_spawn_depth=limit)
    async with AgentRuntime(options=options, event_emitter=recorder) as runtime:
        exactly = await runtime.run(dive, TaskSpec(input=limit))
        assert exactly.output == f"bottom at {limit}"
        assert reached == list(range(limit + 1))
        assert recorder.of(EventType.DEPTH_LIMIT_EXCEEDED) == []

        reached.clear()
        beyond = await runtime.run(dive, TaskSpec(input=limit + 1))
    # The spawn at depth limit+1 was refused before its agent ran; its parent saw the error.
    assert beyond.output == "SpawnDepthExceededError"
    assert reached == list(range(limit + 1))
    (event,) = recorder.of(EventType.DEPTH_LIMIT_EXCEEDED)
    assert event.depth == limit + 1
    assert event.task_id == f"d{limit + 1}"
    assert event.data == {"max_spawn_depth": limit}
    assert event.agent == "dive"


async def test_the_refused_childs_result() -> None:
    results: list[AgentResult[Any]] = []

    async def child(value: int) -> int:
        raise AssertionError("never runs")

    async def parent(value: int, ctx: AgentContext) -> str:
        results.append(await ctx.run(child, TaskSpec(input=value)))
        return "parent carried on"

    options = RuntimeOptions(max_spawn_depth=0, retry_max_attempts=3, retry_backoff_factor=0)
    async with AgentRuntime(options=options) as runtime:
        result = await runtime.run(parent, TaskSpec(input=1))
    assert result.output == "parent carried on"
    (refused,) = results
    assert isinstance(refused.error, SpawnDepthExceededError)
    assert "max_spawn_depth=0" in str(refused.error)
    assert "depth 1" in str(refused.error)
    assert refused.attempts == 0  # refused before any attempt, never retried
    with pytest.raises(SpawnDepthExceededError):
        refused.unwrap()


async def test_gather_children_are_one_level_deeper_and_share_the_trace() -> None:
    seen: list[tuple[int, str, str | None]] = []

    async def child(value: int, ctx: AgentContext) -> int:
        seen.append((ctx.depth, ctx.trace_id, ctx.parent_task_id))
        return value

    async def parent(value: int, ctx: AgentContext) -> int:
        seen.append((ctx.depth, ctx.trace_id, ctx.parent_task_id))
        results = await ctx.gather(child, [TaskSpec(input=i) for i in range(3)])
        return sum(r.unwrap() for r in results)

    async with AgentRuntime(options=RuntimeOptions(max_spawn_depth=1)) as runtime:
        result = await runtime.run(parent, TaskSpec(input=0, task_id="root"))
    assert result.output == 3
    (root_depth, trace, no_parent), *children = seen
    assert (root_depth, no_parent) == (0, None)
    assert children == [(1, trace, "root")] * 3


async def test_without_a_limit_spawning_goes_deep() -> None:
    async def dive(levels: int, ctx: AgentContext) -> int:
        if levels == 0:
            return ctx.depth
        return int((await ctx.run(dive, TaskSpec(input=levels - 1))).unwrap())

    async with AgentRuntime() as runtime:
        assert (await runtime.run(dive, TaskSpec(input=12))).output == 12


async def test_depth_is_checked_before_budget_and_retry() -> None:
    """Depth is the outermost stage: a refused spawn reserves nothing and is never retried."""
    budget = TokenBudget(limit=1000, reserve_per_task=100)
    recorder = Recorder()
    during_refusal: list[int] = []

    async def child(value: int) -> int:
        return value

    async def parent(value: int, ctx: AgentContext) -> str:
        reserved_before = budget.reserved
        result = await ctx.run(child, TaskSpec(input=value))
        during_refusal.append(budget.reserved - reserved_before)
        return describe(result)

    options = RuntimeOptions(
        max_spawn_depth=0, token_budget=budget, retry_max_attempts=3, retry_backoff_factor=0
    )
    async with AgentRuntime(options=options, event_emitter=recorder) as runtime:
        assert (await runtime.run(parent, TaskSpec(input=1))).output == "SpawnDepthExceededError"
    assert during_refusal == [0]
    assert recorder.of(EventType.RETRY_SCHEDULED) == []
    assert recorder.of(EventType.BUDGET_EXCEEDED) == []
    assert len(recorder.of(EventType.DEPTH_LIMIT_EXCEEDED)) == 1


# -- through a pydantic-ai tool -----------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 2])
async def test_a_pydantic_ai_tool_spawns_through_deps(limit: int) -> None:
    """A murmur.Agent's tool takes ``RunContext[AgentContext]`` and spawns with ctx.deps.run;
    the child of a child is again a murmur.Agent (bridged under Trio, spawned back home)."""

    async def leaf(value: int, ctx: AgentContext) -> str:
        return f"leaf at depth {ctx.depth}"

    async def spawn(ctx: RunContext[AgentContext], levels: int) -> str:
        here: AgentContext = ctx.deps
        if levels <= 1:
            result = await here.run(leaf, TaskSpec(input=0))
        else:
            result = await here.run(agent, TaskSpec(input=str(levels - 1)))
        return describe(result)

    agent = murmur.Agent(name="spawner", model=delegating_model("spawn"), tools=(spawn,))
    recorder = Recorder()
    options = RuntimeOptions(max_spawn_depth=limit)
    async with AgentRuntime(options=options, event_emitter=recorder) as runtime:
        exactly = await runtime.run(agent, TaskSpec(input=str(limit)))
        assert exactly.output == f"leaf at depth {limit}"
        assert recorder.of(EventType.DEPTH_LIMIT_EXCEEDED) == []
        beyond = await runtime.run(agent, TaskSpec(input=str(limit + 1)))
    assert beyond.is_ok()
    assert beyond.output == "SpawnDepthExceededError"
    (event,) = recorder.of(EventType.DEPTH_LIMIT_EXCEEDED)
    assert event.depth == limit + 1
    assert event.agent == "leaf"


async def test_a_pydantic_ai_tool_spawns_through_current_context() -> None:
    """A plain pydantic-ai agent (no Murmur deps) reaches its task with current_context()."""

    async def leaf(value: int, ctx: AgentContext) -> str:
        return f"depth {ctx.depth}, parent {ctx.parent.agent if ctx.parent else None}"

    raw = PydanticAgent(delegating_model("spawn"), name="plain")

    @raw.tool_plain
    async def spawn(levels: int) -> str:
        result = await current_context().run(leaf, TaskSpec(input=levels))
        return describe(result)

    async with AgentRuntime(options=RuntimeOptions(max_spawn_depth=1)) as runtime:
        ok = await runtime.run(from_pydantic_ai(raw), TaskSpec(input="1"))
    assert ok.output == "depth 1, parent plain"
    async with AgentRuntime(options=RuntimeOptions(max_spawn_depth=0)) as runtime:
        refused = await runtime.run(raw, TaskSpec(input="1"))
    assert refused.output == "SpawnDepthExceededError"


# -- cancelling a parent cancels its children ----------------------------------------------------


async def test_cancelling_a_parent_cancels_its_children() -> None:
    started = 0
    all_started = anyio.Event()
    log: list[str] = []
    returned: list[Any] = []

    async def child(value: int) -> int:
        nonlocal started
        started += 1
        if started == 3:
            all_started.set()
        try:
            await anyio.Event().wait()
        finally:
            log.append(f"child {value} cancelled")
        return value

    async def parent(value: int, ctx: AgentContext) -> int:
        try:
            results = await ctx.gather(child, [TaskSpec(input=i) for i in range(3)])
        finally:
            log.append("parent cancelled")
        return len(results)

    async with AgentRuntime() as runtime, anyio.create_task_group() as tg:

        async def run() -> None:
            returned.append(await runtime.run(parent, TaskSpec(input=0)))

        tg.start_soon(run)
        await all_started.wait()
        tg.cancel_scope.cancel()
    assert sorted(log) == [
        "child 0 cancelled",
        "child 1 cancelled",
        "child 2 cancelled",
        "parent cancelled",
    ]
    assert log[-1] == "parent cancelled"
    assert returned == []


async def test_cancelling_a_parent_cancels_a_child_spawned_from_a_pydantic_ai_tool() -> None:
    child_in = anyio.Event()
    log: list[str] = []
    recorder = Recorder()

    async def child(value: int) -> int:
        child_in.set()
        try:
            await anyio.Event().wait()
        finally:
            log.append("child cancelled")
        return value

    async def spawn(ctx: RunContext[AgentContext], levels: int) -> str:
        try:
            return describe(await ctx.deps.run(child, TaskSpec(input=levels)))
        finally:
            log.append("tool cancelled")

    agent = murmur.Agent(name="parent", model=delegating_model("spawn"), tools=(spawn,))
    async with AgentRuntime(event_emitter=recorder) as runtime:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(runtime.run, agent, TaskSpec(input="1"))
                await child_in.wait()
                scope.cancel()
        # When the cancellation has gone through, the child and the tool have both stopped.
        assert log == ["child cancelled", "tool cancelled"]
    cancelled = recorder.of(EventType.TASK_CANCELLED)
    assert sorted(e.agent or "" for e in cancelled) == ["child", "parent"]
    assert recorder.of(EventType.TASK_SUCCEEDED) == []


async def test_depth_stage_called_directly() -> None:
    stage = DepthLimitMiddleware(1)

    class Ctx:
        agent = "direct"

        def __init__(self, depth: int) -> None:
            self.depth = depth
            self.emitted: list[EventType] = []

        async def emit(self, kind: EventType, **kwargs: Any) -> None:
            self.emitted.append(kind)

    async def call_next(ctx: Any) -> Any:
        return ctx.depth

    for depth in (0, 1):
        assert await stage(Ctx(depth), call_next) == depth  # type: ignore[arg-type]
    too_deep = Ctx(2)
    with pytest.raises(SpawnDepthExceededError, match="depth 2 exceeds max_spawn_depth=1"):
        await stage(too_deep, call_next)  # type: ignore[arg-type]
    assert too_deep.emitted == [EventType.DEPTH_LIMIT_EXCEEDED]
