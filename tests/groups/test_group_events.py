"""Groups report their lifecycle as events, and one group run is one trace."""

from __future__ import annotations

from typing import Any

import pytest

from murmur import AgentContext, AgentGroup, AgentRuntime, Edge, EventType, TaskSpec
from support import Recorder

pytestmark = pytest.mark.anyio


async def researcher(q: str) -> str:
    return f"finding({q})"


async def reviewer(finding: str) -> str:
    return f"review({finding})"


async def summariser(review: str) -> str:
    return f"summary({review})"


def crew() -> AgentGroup:
    return AgentGroup(
        name="research",
        topology={
            researcher: Edge(to=(reviewer,)),
            reviewer: Edge(to=(summariser,)),
            summariser: Edge.terminal(),
        },
    )


async def test_group_and_node_events_share_one_trace() -> None:
    rec = Recorder()
    async with AgentRuntime(event_emitter=rec) as rt:
        result = await rt.run_group(crew(), TaskSpec(input="q", task_id="g1"))
    assert result.output == "summary(review(finding(q)))"
    types = [e.type for e in rec.events]
    assert types[0] is EventType.GROUP_STARTED
    assert types[-1] is EventType.GROUP_COMPLETED
    assert rec.events[0].data["task_id"] == "g1"
    assert rec.events[-1].data["ok"] is True
    node_events = [
        (e.type, e.data["node"])
        for e in rec.events
        if e.type in (EventType.NODE_STARTED, EventType.NODE_COMPLETED)
    ]
    assert node_events == [
        (EventType.NODE_STARTED, "researcher"),
        (EventType.NODE_COMPLETED, "researcher"),
        (EventType.NODE_STARTED, "reviewer"),
        (EventType.NODE_COMPLETED, "reviewer"),
        (EventType.NODE_STARTED, "summariser"),
        (EventType.NODE_COMPLETED, "summariser"),
    ]
    assert len({e.trace_id for e in rec.events}) == 1
    assert all(e.data.get("group") == "research" for e in rec.events if e.data.get("node"))


async def test_failed_node_event_carries_the_error() -> None:
    async def broken(x: Any) -> Any:
        raise ValueError("node broke")

    group = AgentGroup(name="g", topology={researcher: Edge(to=(broken,)), broken: Edge.terminal()})
    rec = Recorder()
    async with AgentRuntime(event_emitter=rec) as rt:
        result = await rt.run_group(group, TaskSpec(input="q"))
    assert not result.is_ok()
    completed = [e for e in rec.events if e.type is EventType.NODE_COMPLETED]
    broken_event = next(e for e in completed if e.data["node"] == "broken")
    assert broken_event.data["status"] == "failed"
    assert broken_event.error is not None
    assert broken_event.error.message == "node broke"
    assert rec.events[-1].data["ok"] is False


async def test_ctx_run_group_runs_nodes_as_children() -> None:
    rec = Recorder()

    async def lead(q: str, ctx: AgentContext) -> Any:
        inner = await ctx.run_group(crew(), TaskSpec(input=q))
        return inner.output

    async with AgentRuntime(event_emitter=rec) as rt:
        result = await rt.run(lead, TaskSpec(input="q", task_id="lead-1"))
    assert result.output == "summary(review(finding(q)))"
    node_tasks = [e for e in rec.events if e.agent == "reviewer" and e.task_id]
    assert node_tasks
    assert all(e.depth == 1 and e.parent_task_id == "lead-1" for e in node_tasks)
    assert len({e.trace_id for e in rec.events}) == 1
