"""Data flow and scheduling: mappers, the join rule, and nodes starting as soon as inputs are ready.

Ordering is proven with anyio Events and recorded sequences, never with sleeps. The only
timeouts (``fail_after``) are hang guards for the schedules a wrong scheduler would
deadlock on; no test asserts anything about wall-clock time.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from murmur import AgentContext, AgentGroup, AgentRuntime, Edge, TaskSpec

pytestmark = pytest.mark.anyio

#: Seconds before a deadlocked schedule fails instead of hanging the suite.
HANG_GUARD = 10


# -- mapper ----------------------------------------------------------------------------------


async def test_mapper_builds_the_targets_task(runtime: AgentRuntime) -> None:
    seen: list[tuple[Any, dict[str, Any], str]] = []

    async def draft(value: str) -> str:
        return f"draft of {value}"

    async def polish(value: dict[str, Any], ctx: AgentContext) -> str:
        seen.append((value, dict(ctx.task.metadata), ctx.task.task_id))
        return f"polished {value['text']}"

    def to_polish_task(output: str) -> TaskSpec:
        return TaskSpec(input={"text": output.upper()}, metadata={"style": "formal"})

    group = AgentGroup(
        name="g",
        topology={draft: Edge(to=(polish,), mapper=to_polish_task), polish: Edge.terminal()},
    )
    result = await runtime.run_group(group, TaskSpec(input="x", metadata={"tenant": "t1"}))
    assert result.output == "polished DRAFT OF X"
    assert seen == [({"text": "DRAFT OF X"}, {"style": "formal"}, result.results["polish"].task_id)]


async def test_without_mapper_the_output_is_the_input_and_metadata_flows(
    runtime: AgentRuntime,
) -> None:
    seen: dict[str, tuple[Any, dict[str, Any], str]] = {}

    async def first(value: str, ctx: AgentContext) -> int:
        seen["first"] = (value, dict(ctx.task.metadata), ctx.task.task_id)
        return 41

    async def second(value: int, ctx: AgentContext) -> int:
        seen["second"] = (value, dict(ctx.task.metadata), ctx.task.task_id)
        return value + 1

    group = AgentGroup(name="g", topology={first: Edge(to=(second,)), second: Edge.terminal()})
    task = TaskSpec(input="go", task_id="group-task", metadata={"tenant": "t1"})
    result = await runtime.run_group(group, task)
    assert result.output == 42
    assert result.task_id == "group-task"
    assert seen["first"][:2] == ("go", {"tenant": "t1"})
    assert seen["second"][:2] == (41, {"tenant": "t1"})
    # Every node task has its own id, distinct from the group task's.
    ids = {seen["first"][2], seen["second"][2], "group-task"}
    assert len(ids) == 3
    assert result.results["first"].task_id == seen["first"][2]


async def test_a_mapper_that_does_not_return_a_taskspec_fails_its_node(
    runtime: AgentRuntime,
) -> None:
    async def first(value: str) -> str:
        return value

    async def second(value: str) -> str:
        return value

    group = AgentGroup(
        name="g",
        topology={
            first: Edge(to=(second,), mapper=lambda out: out),
            second: Edge.terminal(),
        },
    )
    result = await runtime.run_group(group, TaskSpec(input="x"))
    assert not result.is_ok()
    assert isinstance(result.error, TypeError)
    assert "mapper of edge 'first' -> 'second' must return a murmur.TaskSpec" in str(result.error)
    assert result.status == {"first": "failed", "second": "upstream_failed"}
    assert isinstance(result.results["first"].error, TypeError)


async def test_a_mapper_that_raises_fails_its_node(runtime: AgentRuntime) -> None:
    async def first(value: str) -> str:
        return value

    async def second(value: str) -> str:
        return value

    def broken(output: str) -> TaskSpec:
        raise KeyError("missing field")

    group = AgentGroup(
        name="g",
        topology={first: Edge(to=(second,), mapper=broken), second: Edge.terminal()},
    )
    result = await runtime.run_group(group, TaskSpec(input="x"))
    assert isinstance(result.error, KeyError)
    assert result.status["first"] == "failed"
    assert "second" not in result.results


# -- the join rule ---------------------------------------------------------------------------


async def test_join_waits_for_all_predecessors_and_gets_outputs_by_name(
    runtime: AgentRuntime,
) -> None:
    log: list[str] = []
    right_done = anyio.Event()

    async def split(value: str) -> str:
        return value

    async def left(value: str) -> str:
        # Finish after `right`, so arrival order differs from declaration order.
        await right_done.wait()
        log.append("left done")
        return f"L({value})"

    async def right(value: str) -> str:
        log.append("right done")
        right_done.set()
        return f"R({value})"

    async def join(value: dict[str, str]) -> str:
        log.append(f"join got {sorted(value)}")
        return f"{value['left']}+{value['right']}"

    group = AgentGroup(
        name="diamond",
        topology={
            split: Edge(to=(left, right)),
            left: Edge(to=(join,)),
            right: Edge(to=(join,)),
            join: Edge.terminal(),
        },
    )
    with anyio.fail_after(HANG_GUARD):
        result = await runtime.run_group(group, TaskSpec(input="x"))
    assert result.output == "L(x)+R(x)"
    assert log == ["right done", "left done", "join got ['left', 'right']"]


async def test_join_input_keys_follow_topology_order(runtime: AgentRuntime) -> None:
    received: list[list[str]] = []
    b_done = anyio.Event()

    async def start(value: str) -> str:
        return value

    async def a(value: str) -> str:
        await b_done.wait()
        return "a"

    async def b(value: str) -> str:
        b_done.set()
        return "b"

    async def join(value: dict[str, str]) -> str:
        received.append(list(value))
        return "ok"

    group = AgentGroup(
        name="g",
        topology={
            start: Edge(to=(a, b)),
            a: Edge(to=(join,)),
            b: Edge(to=(join,)),
            join: Edge.terminal(),
        },
    )
    with anyio.fail_after(HANG_GUARD):
        await runtime.run_group(group, TaskSpec(input="x"))
    assert received == [["a", "b"]]


async def test_join_does_not_wait_for_a_pruned_predecessor(runtime: AgentRuntime) -> None:
    received: list[dict[str, str]] = []

    async def start(value: str) -> str:
        return value

    async def maybe(value: str) -> str:
        return "maybe"

    async def maybe_more(value: str) -> str:
        return "maybe more"

    async def surely(value: str) -> str:
        return "surely"

    async def join(value: dict[str, str]) -> str:
        received.append(value)
        return ",".join(value.values())

    group = AgentGroup(
        name="g",
        topology={
            start: (Edge(to=(maybe,), when=lambda out: False), Edge(to=(surely,))),
            maybe: Edge(to=(maybe_more,)),
            maybe_more: Edge(to=(join,)),
            surely: Edge(to=(join,)),
            join: Edge.terminal(),
        },
    )
    result = await runtime.run_group(group, TaskSpec(input="x"))
    assert result.is_ok(), result.error
    # `maybe_more` can no longer fire (its branch was pruned upstream): the join runs
    # with the predecessors that did fire, still keyed by name.
    assert received == [{"surely": "surely"}]
    assert result.status["maybe"] == result.status["maybe_more"] == "pruned"
    assert result.status["join"] == "succeeded"


async def test_join_input_uses_the_mappers_input(runtime: AgentRuntime) -> None:
    async def start(value: int) -> int:
        return value

    async def double(value: int) -> int:
        return value * 2

    async def square(value: int) -> int:
        return value * value

    async def join(value: dict[str, Any]) -> dict[str, Any]:
        return value

    group = AgentGroup(
        name="g",
        topology={
            start: Edge(to=(double, square)),
            double: Edge(to=(join,), mapper=lambda out: TaskSpec(input={"doubled": out})),
            square: Edge(to=(join,)),
            join: Edge.terminal(),
        },
    )
    result = await runtime.run_group(group, TaskSpec(input=3))
    assert result.output == {"double": {"doubled": 6}, "square": 9}


# -- dataflow scheduling ---------------------------------------------------------------------


async def test_a_slow_branch_does_not_hold_back_an_unrelated_fast_branch(
    runtime: AgentRuntime,
) -> None:
    """The slow branch blocks until the fast branch's terminal has run.

    A tier-by-tier (superstep) scheduler would run ``slow`` and ``fast1`` as one tier and
    wait for ``slow`` before starting ``fast2``: this schedule would deadlock (and fail on
    the hang guard). A dataflow scheduler runs the fast branch to its end while ``slow``
    is still blocked.
    """
    finished: list[str] = []
    slow_started = anyio.Event()
    fast_terminal_done = anyio.Event()

    async def start(value: str) -> str:
        return value

    async def slow(value: str) -> str:
        slow_started.set()
        await fast_terminal_done.wait()
        finished.append("slow")
        return "slow"

    async def slow_end(value: str) -> str:
        finished.append("slow_end")
        return f"{value} end"

    async def fast1(value: str) -> str:
        await slow_started.wait()  # the slow branch is really in flight from here on
        finished.append("fast1")
        return "fast"

    async def fast2(value: str) -> str:
        finished.append("fast2")
        return value

    async def fast_end(value: str) -> str:
        finished.append("fast_end")
        fast_terminal_done.set()
        return f"{value} end"

    group = AgentGroup(
        name="branches",
        topology={
            start: Edge(to=(slow, fast1)),
            slow: Edge(to=(slow_end,)),
            slow_end: Edge.terminal(),
            fast1: Edge(to=(fast2,)),
            fast2: Edge(to=(fast_end,)),
            fast_end: Edge.terminal(),
        },
    )
    with anyio.fail_after(HANG_GUARD):
        result = await runtime.run_group(group, TaskSpec(input="x"))
    assert result.is_ok(), result.error
    assert finished == ["fast1", "fast2", "fast_end", "slow", "slow_end"]
    assert result.outputs == {"slow_end": "slow end", "fast_end": "fast end"}


async def test_a_node_starts_as_soon_as_its_own_inputs_are_ready(runtime: AgentRuntime) -> None:
    """``after_fast`` depends on ``fast`` only: it runs while ``slow`` (same tier) blocks."""
    release_slow = anyio.Event()
    log: list[str] = []

    async def start(value: str) -> str:
        return value

    async def slow(value: str) -> str:
        await release_slow.wait()
        log.append("slow")
        return "slow"

    async def fast(value: str) -> str:
        log.append("fast")
        return "fast"

    async def after_fast(value: str) -> str:
        log.append("after_fast")
        release_slow.set()
        return value

    async def join(value: dict[str, str]) -> str:
        log.append("join")
        return "+".join(value.values())

    group = AgentGroup(
        name="g",
        topology={
            start: Edge(to=(slow, fast)),
            slow: Edge(to=(join,)),
            fast: Edge(to=(after_fast,)),
            after_fast: Edge(to=(join,)),
            join: Edge.terminal(),
        },
    )
    with anyio.fail_after(HANG_GUARD):
        result = await runtime.run_group(group, TaskSpec(input="x"))
    assert log == ["fast", "after_fast", "slow", "join"]
    assert result.output == "slow+fast"


async def test_independent_entries_run_concurrently(runtime: AgentRuntime) -> None:
    """Two entries that each wait for the other to start can only finish if both run."""
    a_started = anyio.Event()
    b_started = anyio.Event()

    async def a(value: str) -> str:
        a_started.set()
        await b_started.wait()
        return "a"

    async def b(value: str) -> str:
        b_started.set()
        await a_started.wait()
        return "b"

    group = AgentGroup(name="g", topology={a: Edge.terminal(), b: Edge.terminal()}, entry=(a, b))
    with anyio.fail_after(HANG_GUARD):
        result = await runtime.run_group(group, TaskSpec(input="x"))
    assert result.outputs == {"a": "a", "b": "b"}
