"""Conditional edges: sync and async predicates, routing, pruning, and predicates that raise."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from murmur import AgentError, AgentGroup, AgentRuntime, Edge, FanOut, TaskSpec

pytestmark = pytest.mark.anyio


class Batch(BaseModel):
    items: FanOut[list[int]]


class Ticket(BaseModel):
    text: str
    difficulty: int


async def triage(text: str) -> Ticket:
    return Ticket(text=text, difficulty=len(text))


async def easy(ticket: Ticket) -> str:
    return f"easy answer to {ticket.text}"


async def hard(ticket: Ticket) -> str:
    return f"hard answer to {ticket.text}"


def is_easy(ticket: Ticket) -> bool:
    return ticket.difficulty <= 5


async def is_hard(ticket: Ticket) -> bool:
    await anyio.lowlevel.checkpoint()  # a real async predicate: it yields
    return ticket.difficulty > 5


def routing_group() -> AgentGroup:
    return AgentGroup(
        name="support",
        topology={
            triage: (Edge(to=(easy,), when=is_easy), Edge(to=(hard,), when=is_hard)),
            easy: Edge.terminal(),
            hard: Edge.terminal(),
        },
    )


async def test_sync_predicate_routes_to_the_easy_branch(runtime: AgentRuntime) -> None:
    result = await runtime.run_group(routing_group(), TaskSpec(input="hi"))
    assert result.is_ok(), result.error
    # The terminals actually reached decide the result.
    assert result.outputs == {"easy": "easy answer to hi"}
    assert result.output == "easy answer to hi"
    assert result.status == {"triage": "succeeded", "easy": "succeeded", "hard": "pruned"}
    assert "hard" not in result.results


async def test_async_predicate_routes_to_the_hard_branch(runtime: AgentRuntime) -> None:
    result = await runtime.run_group(routing_group(), TaskSpec(input="a long question"))
    assert result.is_ok(), result.error
    assert result.outputs == {"hard": "hard answer to a long question"}
    assert result.status["easy"] == "pruned"


async def test_predicates_see_the_nodes_output(runtime: AgentRuntime) -> None:
    seen: list[Any] = []

    def record(output: Any) -> bool:
        seen.append(output)
        return True

    group = AgentGroup(
        name="g", topology={triage: Edge(to=(easy,), when=record), easy: Edge.terminal()}
    )
    await runtime.run_group(group, TaskSpec(input="hi"))
    assert seen == [Ticket(text="hi", difficulty=2)]


async def test_both_edges_may_fire(runtime: AgentRuntime) -> None:
    group = AgentGroup(
        name="g",
        topology={
            triage: (Edge(to=(easy,), when=lambda t: True), Edge(to=(hard,), when=is_hard)),
            easy: Edge.terminal(),
            hard: Edge.terminal(),
        },
    )
    result = await runtime.run_group(group, TaskSpec(input="a long question"))
    assert set(result.outputs) == {"easy", "hard"}
    with pytest.raises(ValueError, match="several terminals"):
        _ = result.output


async def test_a_pruned_branch_is_pruned_all_the_way_down(runtime: AgentRuntime) -> None:
    ran: list[str] = []

    async def step(value: Any) -> Any:
        ran.append("step")
        return value

    async def after(value: Any) -> Any:
        ran.append("after")
        return value

    group = AgentGroup(
        name="g",
        topology={
            triage: (Edge(to=(easy,), when=is_easy), Edge(to=(step,), when=is_hard)),
            step: Edge(to=(after,)),
            after: Edge.terminal(),
            easy: Edge.terminal(),
        },
    )
    result = await runtime.run_group(group, TaskSpec(input="hi"))
    assert result.is_ok(), result.error
    assert ran == []
    assert result.status == {
        "triage": "succeeded",
        "step": "pruned",
        "after": "pruned",
        "easy": "succeeded",
    }


async def test_a_run_that_reaches_no_terminal_fails(runtime: AgentRuntime) -> None:
    group = AgentGroup(
        name="g",
        topology={
            triage: (Edge(to=(easy,), when=lambda t: False), Edge(to=(hard,), when=is_hard)),
            easy: Edge.terminal(),
            hard: Edge.terminal(),
        },
    )
    result = await runtime.run_group(group, TaskSpec(input="hi"))
    assert not result.is_ok()
    assert isinstance(result.error, AgentError)
    assert "reached no terminal" in str(result.error)
    assert result.outputs == {}
    assert result.output is None
    assert result.status == {"triage": "succeeded", "easy": "pruned", "hard": "pruned"}
    with pytest.raises(AgentError, match="reached no terminal"):
        result.unwrap()


async def test_a_terminal_node_may_also_route_on(runtime: AgentRuntime) -> None:
    """A node with Edge.terminal() among its edges is an output whether or not it routes on."""
    group = AgentGroup(
        name="g",
        topology={
            triage: (Edge.terminal(), Edge(to=(hard,), when=is_hard)),
            hard: Edge.terminal(),
        },
    )
    short = await runtime.run_group(group, TaskSpec(input="hi"))
    assert short.outputs == {"triage": Ticket(text="hi", difficulty=2)}
    assert short.status["hard"] == "pruned"
    long = await runtime.run_group(group, TaskSpec(input="a long question"))
    assert list(long.outputs) == ["triage", "hard"]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_predicate_that_raises_makes_its_node_an_error(
    runtime: AgentRuntime, kind: str
) -> None:
    def broken_sync(ticket: Ticket) -> bool:
        raise LookupError("no such rule")

    async def broken_async(ticket: Ticket) -> bool:
        await anyio.lowlevel.checkpoint()
        raise LookupError("no such rule")

    group = AgentGroup(
        name="g",
        topology={
            triage: (
                Edge(to=(easy,), when=broken_sync if kind == "sync" else broken_async),
                Edge(to=(hard,), when=is_hard),
            ),
            easy: Edge.terminal(),
            hard: Edge.terminal(),
        },
    )
    result = await runtime.run_group(group, TaskSpec(input="hi"))
    assert not result.is_ok()
    assert isinstance(result.error, LookupError)
    triage_result = result.results["triage"]
    assert triage_result.error is result.error
    assert triage_result.output is None  # the output is dropped: an error result
    assert result.status == {
        "triage": "failed",
        "easy": "upstream_failed",
        "hard": "upstream_failed",
    }
    assert result.errors == {"triage": result.error}


async def test_predicate_on_a_fanned_out_node_sees_the_list(runtime: AgentRuntime) -> None:
    async def split(value: list[int]) -> Batch:
        return Batch(items=value)

    async def square(value: int) -> int:
        return value * value

    async def big(values: list[int]) -> str:
        return f"big {values}"

    async def small(values: list[int]) -> str:
        return f"small {values}"

    group = AgentGroup(
        name="g",
        topology={
            split: Edge(to=(square,)),
            square: (
                Edge(to=(big,), when=lambda values: sum(values) > 10),
                Edge(to=(small,), when=lambda values: sum(values) <= 10),
            ),
            big: Edge.terminal(),
            small: Edge.terminal(),
        },
    )
    result = await runtime.run_group(group, TaskSpec(input=[1, 2, 3]))
    assert result.outputs == {"big": "big [1, 4, 9]"}
    assert result.status["small"] == "pruned"
