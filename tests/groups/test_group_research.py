"""The seed's research pipeline, as written, with function agents and with murmur.Agent nodes.

Also: nodes go through the runtime (transport seam, pipeline stages, depth), at depth 0 for a
top-level group and as children of the calling agent when ``parent=`` is given.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import murmur
from murmur import (
    AgentContext,
    AgentGroup,
    AgentRuntime,
    Edge,
    FunctionAgent,
    GroupResult,
    RuntimeOptions,
    SpawnDepthExceededError,
    TaskSpec,
    Usage,
    from_pydantic_ai,
)
from murmur._pipeline import CallNext
from murmur.transport import EventSink, Executor, LocalTransport, TaskEnvelope, Transport

pytestmark = pytest.mark.anyio


def user_prompt(messages: list[ModelMessage]) -> str:
    """The user prompt of the request a FunctionModel received."""
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return part.content
    raise AssertionError("no user prompt")


def wrapping_model(tag: str, prompts: list[str]) -> FunctionModel:
    """A model that records its prompt and answers ``tag(prompt)``."""

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        prompt = user_prompt(messages)
        prompts.append(prompt)
        return ModelResponse(parts=[TextPart(f"{tag}({prompt})")])

    return FunctionModel(respond)


# -- the seed, as written ----------------------------------------------------------------------


async def test_seed_research_pipeline_with_function_agents(runtime: AgentRuntime) -> None:
    seen: list[tuple[str, Any]] = []

    async def researcher(question: str) -> str:
        seen.append(("researcher", question))
        return f"finding about {question}"

    async def reviewer(finding: str) -> str:
        seen.append(("reviewer", finding))
        return f"reviewed: {finding}"

    async def summariser(review: str) -> str:
        seen.append(("summariser", review))
        return f"summary of {review}"

    question = "why is the sky blue?"

    # -- verbatim from the seed's cookbook ("Replace ad-hoc DAG runners with AgentGroup") --
    # fmt: off
    crew = AgentGroup(
        name="research",
        topology={
            researcher: Edge(to=(reviewer,)),
            reviewer:   Edge(to=(summariser,)),
            summariser: Edge.terminal(),
        },
    )

    result = await runtime.run_group(crew, TaskSpec(input=question))
    # fmt: on
    # ---------------------------------------------------------------------------------------

    assert isinstance(result, GroupResult)
    assert result.is_ok(), result.error
    assert result.output == "summary of reviewed: finding about why is the sky blue?"
    assert result.outputs == {"summariser": result.output}
    assert seen == [
        ("researcher", question),
        ("reviewer", "finding about why is the sky blue?"),
        ("summariser", "reviewed: finding about why is the sky blue?"),
    ]
    assert list(result.results) == ["researcher", "reviewer", "summariser"]
    assert all(r.is_ok() for r in result.results.values())
    assert result.status == dict.fromkeys(crew.nodes, "succeeded")
    assert result.group == "research"
    # Same answer as the hand-written pipeline it replaces.
    assert result.output == await summariser(await reviewer(await researcher(question)))


async def test_seed_research_pipeline_with_murmur_agents(runtime: AgentRuntime) -> None:
    prompts: dict[str, list[str]] = {"researcher": [], "reviewer": [], "summariser": []}
    researcher = murmur.Agent(
        name="researcher", model=wrapping_model("finding", prompts["researcher"])
    )
    reviewer = murmur.Agent(name="reviewer", model=wrapping_model("review", prompts["reviewer"]))
    summariser = murmur.Agent(
        name="summariser", model=wrapping_model("summary", prompts["summariser"])
    )

    # fmt: off
    crew = AgentGroup(
        name="research",
        topology={
            researcher: Edge(to=(reviewer,)),
            reviewer:   Edge(to=(summariser,)),
            summariser: Edge.terminal(),
        },
    )
    # fmt: on
    result = await runtime.run_group(crew, TaskSpec(input="q"))

    assert result.is_ok(), result.error
    assert result.output == "summary(review(finding(q)))"
    assert prompts == {
        "researcher": ["q"],
        "reviewer": ["finding(q)"],
        "summariser": ["review(finding(q))"],
    }
    # FunctionModel reports usage: the group's total is the sum over its nodes.
    per_node = [r.usage for r in result.results.values()]
    assert all(u.requests == 1 for u in per_node)
    assert result.usage == per_node[0] + per_node[1] + per_node[2]
    assert result.usage.requests == 3
    assert result.usage.total_tokens > 0


async def test_group_mixes_function_murmur_and_pydantic_ai_agents(runtime: AgentRuntime) -> None:
    reviewer_prompts: list[str] = []
    summary_prompts: list[str] = []

    async def researcher(question: str) -> str:
        return f"finding({question})"

    reviewer = murmur.Agent(name="reviewer", model=wrapping_model("review", reviewer_prompts))
    # A raw pydantic_ai.Agent is not hashable: wrap it to use it as a topology key.
    summariser = from_pydantic_ai(
        PydanticAgent(wrapping_model("summary", summary_prompts), name="summariser")
    )
    crew = AgentGroup(
        name="mixed",
        topology={
            researcher: Edge(to=(reviewer,)),
            reviewer: Edge(to=(summariser,)),
            summariser: Edge.terminal(),
        },
    )
    result = await runtime.run_group(crew, TaskSpec(input="q"))
    assert result.is_ok(), result.error
    assert result.output == "summary(review(finding(q)))"
    assert reviewer_prompts == ["finding(q)"]
    assert summary_prompts == ["review(finding(q))"]


# -- nodes go through the runtime ------------------------------------------------------------


async def test_nodes_run_through_the_pipeline_stages() -> None:
    seen: list[tuple[str, int]] = []

    class Recorder:
        async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
            seen.append((ctx.agent, ctx.depth))
            return await call_next(ctx)

    async def first(value: str) -> str:
        return value + "1"

    async def second(value: str) -> str:
        return value + "2"

    group = AgentGroup(name="g", topology={first: Edge(to=(second,)), second: Edge.terminal()})
    async with AgentRuntime(middleware=[Recorder()]) as runtime:
        result = await runtime.run_group(group, TaskSpec(input="x"))
    assert result.output == "x12"
    # A top-level group's nodes run at depth 0.
    assert seen == [("first", 0), ("second", 0)]


async def test_nodes_are_submitted_through_the_transport() -> None:
    submitted: list[str] = []

    class CountingTransport(Transport):
        def __init__(self, inner: Transport) -> None:
            self.inner = inner

        async def submit(self, envelope: TaskEnvelope, events: EventSink) -> Any:
            submitted.append(envelope.agent)
            return await self.inner.submit(envelope, events)

    async def first(value: str) -> str:
        return value + "1"

    async def second(value: str) -> str:
        return value + "2"

    group = AgentGroup(name="g", topology={first: Edge(to=(second,)), second: Edge.terminal()})
    executor = Executor(agents={"first": FunctionAgent(first), "second": FunctionAgent(second)})
    transport = CountingTransport(LocalTransport(executor))
    async with AgentRuntime(transport=transport) as runtime:
        result = await runtime.run_group(group, TaskSpec(input="x"))
    assert result.output == "x12"
    assert submitted == ["first", "second"]


async def test_nodes_get_the_runtime_retry_policy() -> None:
    calls = 0

    async def flaky(value: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("transient")
        return value + "!"

    group = AgentGroup(name="g", topology={flaky: Edge.terminal()})
    options = RuntimeOptions(
        retry_max_attempts=2, retry_backoff_factor=0, retry_on=(ConnectionError,)
    )
    async with AgentRuntime(options=options) as runtime:
        result = await runtime.run_group(group, TaskSpec(input="x"))
    assert result.is_ok(), result.error
    assert result.output == "x!"
    assert result.results["flaky"].attempts == 2


async def test_group_inside_an_agent_spawns_children_of_it(runtime: AgentRuntime) -> None:
    seen: dict[str, tuple[int, str | None, str]] = {}

    async def first(value: str, ctx: AgentContext) -> str:
        seen["first"] = (ctx.depth, ctx.parent_task_id, ctx.trace_id)
        return value + "1"

    async def second(value: str, ctx: AgentContext) -> str:
        seen["second"] = (ctx.depth, ctx.parent_task_id, ctx.trace_id)
        return value + "2"

    group = AgentGroup(name="inner", topology={first: Edge(to=(second,)), second: Edge.terminal()})

    async def orchestrator(value: str, ctx: AgentContext) -> str:
        seen["orchestrator"] = (ctx.depth, ctx.parent_task_id, ctx.trace_id)
        inner = await ctx.runtime.run_group(group, TaskSpec(input=value), parent=ctx)
        return str(inner.unwrap())

    result = await runtime.run(orchestrator, TaskSpec(input="x", task_id="outer"))
    assert result.unwrap() == "x12"
    depth, parent, trace = seen["orchestrator"]
    assert (depth, parent) == (0, None)
    assert seen["first"] == (1, "outer", trace)
    assert seen["second"] == (1, "outer", trace)


async def test_child_group_respects_the_depth_limit() -> None:
    async def leaf(value: str) -> str:
        return value

    group = AgentGroup(name="inner", topology={leaf: Edge.terminal()})

    async def orchestrator(value: str, ctx: AgentContext) -> GroupResult:
        return await ctx.runtime.run_group(group, TaskSpec(input=value), parent=ctx)

    async with AgentRuntime(options=RuntimeOptions(max_spawn_depth=0)) as runtime:
        outer = await runtime.run(orchestrator, TaskSpec(input="x"))
        top_level = await runtime.run_group(group, TaskSpec(input="y"))
    inner = outer.unwrap()
    assert not inner.is_ok()
    assert isinstance(inner.error, SpawnDepthExceededError)
    assert inner.status == {"leaf": "failed"}
    # The same group at top level runs at depth 0, within the limit.
    assert top_level.output == "y"


async def test_usage_reported_by_function_nodes_is_totalled(runtime: AgentRuntime) -> None:
    async def first(value: str, ctx: AgentContext) -> str:
        ctx.report_usage(input_tokens=3, output_tokens=4, requests=1)
        return value

    async def second(value: str, ctx: AgentContext) -> str:
        ctx.report_usage(input_tokens=10, output_tokens=1, requests=2, tool_calls=1)
        return value

    group = AgentGroup(name="g", topology={first: Edge(to=(second,)), second: Edge.terminal()})
    result = await runtime.run_group(group, TaskSpec(input="x"))
    assert result.usage == Usage(input_tokens=13, output_tokens=5, requests=3, tool_calls=1)
