"""GroupResult contents, and the scheduler's lifecycle hooks (where group events will plug in)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from murmur import (
    AgentContext,
    AgentGroup,
    AgentResult,
    AgentRuntime,
    Edge,
    FanOut,
    GroupResult,
    TaskSpec,
    Usage,
)
from murmur.groups import GroupScheduler, NodeStatus

pytestmark = pytest.mark.anyio


class Work(BaseModel):
    parts: FanOut[list[str]]


async def split(value: str, ctx: AgentContext) -> Work:
    ctx.report_usage(input_tokens=1, output_tokens=1, requests=1)
    return Work(parts=value.split())


async def shout(part: str, ctx: AgentContext) -> str:
    ctx.report_usage(input_tokens=2, output_tokens=3, requests=1)
    if part == "boom":
        raise ValueError("cannot shout boom")
    return part.upper()


async def count(parts: list[str], ctx: AgentContext) -> int:
    ctx.report_usage(input_tokens=5, requests=1)
    return len(parts)


async def join_words(parts: list[str]) -> str:
    return " ".join(parts)


def fan_group() -> AgentGroup:
    return AgentGroup(
        name="words",
        topology={
            split: Edge(to=(shout,)),
            shout: Edge(to=(count, join_words)),
            count: Edge.terminal(),
            join_words: Edge.terminal(),
        },
    )


async def test_group_result_contents(runtime: AgentRuntime) -> None:
    result = await runtime.run_group(fan_group(), TaskSpec(input="a boom c", task_id="job-1"))
    assert isinstance(result, GroupResult)
    assert result.is_ok(), result.error
    assert result.group == "words"
    assert result.task_id == "job-1"
    # Outputs per terminal, in topology order.
    assert result.outputs == {"count": 2, "join_words": "A C"}
    with pytest.raises(ValueError, match=r"several terminals \('count', 'join_words'\)"):
        _ = result.output
    # Every node's AgentResult, fan-out aggregate included.
    assert list(result.results) == ["split", "shout", "count", "join_words"]
    assert all(isinstance(r, AgentResult) for r in result.results.values())
    assert result.results["shout"].output == ["A", "C"]
    assert result.results["shout"].agent == "shout"
    # ... and each fan-out slot, in item order.
    slots = result.slots["shout"]
    assert [s.output for s in slots] == ["A", None, "C"]
    assert isinstance(slots[1].error, ValueError)
    assert result.failed_slots == {"shout": [1]}
    # Total usage: every node and every slot (the failed one included).
    assert result.results["shout"].usage == Usage(input_tokens=6, output_tokens=9, requests=3)
    assert result.usage == Usage(input_tokens=12, output_tokens=10, requests=5)
    assert result.usage == sum((r.usage for r in result.results.values()), Usage())
    assert isinstance(result.duration, float)
    assert result.duration >= 0.0
    assert result.status == dict.fromkeys(["split", "shout", "count", "join_words"], "succeeded")
    assert result.errors == {}
    with pytest.raises(ValueError, match="several terminals"):
        result.unwrap()


async def test_a_failed_group_serialises_its_error(runtime: AgentRuntime) -> None:
    async def broken(value: str) -> str:
        raise KeyError("nope")

    group = AgentGroup(name="g", topology={broken: Edge.terminal()})
    result = await runtime.run_group(group, TaskSpec(input="x"))
    assert not result.is_ok()
    assert result.output is None
    data = json.loads(result.model_dump_json())
    assert data["error"]["type"] == "KeyError"
    assert data["results"]["broken"]["error"]["type"] == "KeyError"
    assert data["status"] == {"broken": "failed"}


async def test_single_terminal_output_and_unwrap(runtime: AgentRuntime) -> None:
    async def only(value: int) -> int:
        return value + 1

    result = await runtime.run_group(
        AgentGroup(name="g", topology={only: Edge.terminal()}), TaskSpec(input=1)
    )
    assert result.output == 2
    assert result.unwrap() == 2
    assert result.outputs == {"only": 2}


# -- lifecycle hooks ---------------------------------------------------------------------------


class Recording(GroupScheduler):
    """Records every lifecycle moment, as the events system will."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[tuple[Any, ...]] = []

    async def _on_group_started(self) -> None:
        self.log.append(("group_started", self.group.name))

    async def _on_node_started(self, node: str, tasks: list[TaskSpec]) -> None:
        self.log.append(("node_started", node, len(tasks)))

    async def _on_node_completed(self, node: str, result: AgentResult[Any]) -> None:
        self.log.append(("node_completed", node, result.is_ok()))

    async def _on_node_skipped(self, node: str, status: NodeStatus) -> None:
        self.log.append(("node_skipped", node, status))

    async def _on_group_completed(self, result: GroupResult) -> None:
        self.log.append(("group_completed", result.is_ok()))


async def test_hooks_mark_every_lifecycle_moment_in_order(runtime: AgentRuntime) -> None:
    async def never(value: Any) -> Any:
        return value

    group = AgentGroup(
        name="words",
        topology={
            split: (Edge(to=(shout,)), Edge(to=(never,), when=lambda work: False)),
            shout: Edge(to=(count,)),
            never: Edge.terminal(),
            count: Edge.terminal(),
        },
    )
    scheduler = Recording(runtime, group, TaskSpec(input="a b"), parent=None)
    result = await scheduler.run()
    assert result.is_ok(), result.error
    assert scheduler.log == [
        ("group_started", "words"),
        ("node_started", "split", 1),
        ("node_completed", "split", True),
        ("node_skipped", "never", "pruned"),
        ("node_started", "shout", 2),  # a fanned-out node: one task per item
        ("node_completed", "shout", True),
        ("node_started", "count", 1),
        ("node_completed", "count", True),
        ("group_completed", True),
    ]


async def test_hooks_report_failures_and_upstream_failures(runtime: AgentRuntime) -> None:
    async def broken(value: Any) -> Any:
        raise RuntimeError("broken")

    async def after(value: Any) -> Any:
        return value

    group = AgentGroup(name="g", topology={broken: Edge(to=(after,)), after: Edge.terminal()})
    scheduler = Recording(runtime, group, TaskSpec(input="x"), parent=None)
    result = await scheduler.run()
    assert scheduler.log == [
        ("group_started", "g"),
        ("node_started", "broken", 1),
        ("node_completed", "broken", False),
        ("node_skipped", "after", "upstream_failed"),
        ("group_completed", False),
    ]
    assert not result.is_ok()
    with pytest.raises(RuntimeError, match="runs once"):
        await scheduler.run()
