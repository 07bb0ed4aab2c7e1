"""The failure policy.

* ``fail_fast=True`` (the default): the first node failure cancels every other running node
  of the group; nodes that never started are ``cancelled`` too, except the failed node's own
  descendants, which are ``upstream_failed``.
* ``fail_fast=False``: a failure only skips the failed node's descendants
  (``upstream_failed``); unrelated branches run to completion and their terminals' outputs
  are in the result, which is still not ok.

Cancellation from outside the group is never turned into a result.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from murmur import (
    AgentContext,
    AgentGroup,
    AgentResult,
    AgentRuntime,
    Edge,
    FanOut,
    TaskCancelledError,
    TaskSpec,
)
from murmur.groups import GroupScheduler

pytestmark = pytest.mark.anyio

HANG_GUARD = 10  # seconds; a hang guard only, no timing is asserted


class Items(BaseModel):
    items: FanOut[list[int]]


async def start(value: str) -> str:
    return value


async def a_end(value: Any) -> Any:
    return value


async def b_end(value: Any) -> Any:
    return value


def two_branches(a: Any, b: Any, *, fail_fast: bool = True) -> AgentGroup:
    return AgentGroup(
        name="two",
        topology={
            start: Edge(to=(a, b)),
            a: Edge(to=(a_end,)),
            a_end: Edge.terminal(),
            b: Edge(to=(b_end,)),
            b_end: Edge.terminal(),
        },
        fail_fast=fail_fast,
    )


def fan_out_beside(a: Any, b: Any, worker: Any) -> AgentGroup:
    """``a`` beside ``b``, whose output fans out to ``worker``."""
    return AgentGroup(
        name="g",
        topology={
            start: Edge(to=(a, b)),
            a: Edge.terminal(),
            b: Edge(to=(worker,)),
            worker: Edge.terminal(),
        },
    )


async def test_fail_fast_cancels_running_siblings(runtime: AgentRuntime) -> None:
    b_started = anyio.Event()
    never = anyio.Event()
    b_saw: list[str] = []

    async def a(value: str) -> str:
        await b_started.wait()  # b is really running when a fails
        raise RuntimeError("a broke")

    async def b(value: str) -> str:
        b_started.set()
        try:
            await never.wait()
        except anyio.get_cancelled_exc_class():
            b_saw.append("cancelled")
            raise
        return "b"

    group = two_branches(a, b)
    assert group.fail_fast is True
    with anyio.fail_after(HANG_GUARD):
        result = await runtime.run_group(group, TaskSpec(input="x"))
    assert not result.is_ok()
    assert isinstance(result.error, RuntimeError)
    assert str(result.error) == "a broke"
    assert b_saw == ["cancelled"]
    assert result.status == {
        "start": "succeeded",
        "a": "failed",
        "a_end": "upstream_failed",
        "b": "cancelled",
        "b_end": "cancelled",
    }
    cancelled = result.results["b"]
    assert isinstance(cancelled.error, TaskCancelledError)
    assert "node 'a' of group 'two' failed first" in str(cancelled.error)
    assert "b_end" not in result.results  # never started: no result
    assert result.errors == {"a": result.error}
    assert result.outputs == {}


async def test_fail_fast_cancels_a_sibling_fan_out(runtime: AgentRuntime) -> None:
    in_flight = 0
    all_in = anyio.Event()
    never = anyio.Event()

    async def a(value: str) -> str:
        await all_in.wait()
        raise RuntimeError("a broke")

    async def b(value: str) -> Items:
        return Items(items=[1, 2, 3])

    async def worker(item: int) -> int:
        nonlocal in_flight
        in_flight += 1
        if in_flight == 3:
            all_in.set()
        await never.wait()
        return item

    group = fan_out_beside(a, b, worker)
    with anyio.fail_after(HANG_GUARD):
        result = await runtime.run_group(group, TaskSpec(input="x"))
    assert isinstance(result.error, RuntimeError)
    assert result.status["worker"] == "cancelled"
    assert isinstance(result.results["worker"].error, TaskCancelledError)
    assert "worker" not in result.slots  # the fan-out never returned


async def test_fail_fast_keeps_the_usage_of_a_node_cancelled_while_routing(
    runtime: AgentRuntime,
) -> None:
    routing = anyio.Event()
    never = anyio.Event()

    async def a(value: str) -> str:
        await routing.wait()
        raise RuntimeError("a broke")

    async def b(value: str, ctx: AgentContext) -> str:
        ctx.report_usage(input_tokens=5, requests=1)
        return "b"

    async def waits_forever(output: str) -> bool:
        routing.set()
        await never.wait()
        return True

    group = AgentGroup(
        name="g",
        topology={
            start: Edge(to=(a, b)),
            a: Edge(to=(a_end,)),
            a_end: Edge.terminal(),
            b: Edge(to=(b_end,), when=waits_forever),
            b_end: Edge.terminal(),
        },
    )
    with anyio.fail_after(HANG_GUARD):
        result = await runtime.run_group(group, TaskSpec(input="x"))
    assert result.status["b"] == "cancelled"
    assert isinstance(result.results["b"].error, TaskCancelledError)
    assert result.results["b"].usage.input_tokens == 5
    assert result.usage.input_tokens == 5


async def test_without_fail_fast_unrelated_branches_complete(runtime: AgentRuntime) -> None:
    async def a(value: str) -> str:
        raise RuntimeError("a broke")

    async def b(value: str) -> str:
        return f"b({value})"

    group = two_branches(a, b, fail_fast=False)
    with anyio.fail_after(HANG_GUARD):
        result = await runtime.run_group(group, TaskSpec(input="x"))
    assert not result.is_ok()
    assert isinstance(result.error, RuntimeError)
    assert result.outputs == {"b_end": "b(x)"}
    assert result.status == {
        "start": "succeeded",
        "a": "failed",
        "a_end": "upstream_failed",
        "b": "succeeded",
        "b_end": "succeeded",
    }
    with pytest.raises(RuntimeError, match="a broke"):
        result.unwrap()


async def test_without_fail_fast_a_running_sibling_is_not_cancelled(
    runtime: AgentRuntime,
) -> None:
    """b is provably still running when a's failure is handled, and finishes normally."""
    b_started = anyio.Event()
    a_failure_handled = anyio.Event()
    b_saw: list[str] = []

    class Watcher(GroupScheduler):
        async def _on_node_completed(self, node: str, result: AgentResult[Any]) -> None:
            if node == "a" and not result.is_ok():
                a_failure_handled.set()

    async def a(value: str) -> str:
        await b_started.wait()
        raise RuntimeError("a broke")

    async def b(value: str) -> str:
        b_started.set()
        try:
            await a_failure_handled.wait()
        except anyio.get_cancelled_exc_class():
            b_saw.append("cancelled")
            raise
        b_saw.append("finished")
        return "b"

    group = two_branches(a, b, fail_fast=False)
    with anyio.fail_after(HANG_GUARD):
        result = await Watcher(runtime, group, TaskSpec(input="x"), parent=None).run()
    assert b_saw == ["finished"]
    assert result.outputs == {"b_end": "b"}
    assert result.status["a_end"] == "upstream_failed"
    assert not result.is_ok()


async def test_without_fail_fast_a_join_behind_a_failure_is_upstream_failed(
    runtime: AgentRuntime,
) -> None:
    async def a(value: str) -> str:
        raise RuntimeError("a broke")

    async def b(value: str) -> str:
        return "b"

    async def join(value: dict[str, str]) -> str:
        return "never"

    async def after(value: str) -> str:
        return "never"

    group = AgentGroup(
        name="g",
        topology={
            start: Edge(to=(a, b)),
            a: Edge(to=(join,)),
            b: Edge(to=(join,)),
            join: Edge(to=(after,)),
            after: Edge.terminal(),
        },
        fail_fast=False,
    )
    result = await runtime.run_group(group, TaskSpec(input="x"))
    # A failed input is not a pruned one: the join does not run without it.
    assert result.status == {
        "start": "succeeded",
        "a": "failed",
        "b": "succeeded",
        "join": "upstream_failed",
        "after": "upstream_failed",
    }
    assert result.outputs == {}
    assert isinstance(result.error, RuntimeError)


async def test_a_failing_entry_fails_the_group(runtime: AgentRuntime) -> None:
    async def first(value: str) -> str:
        raise ValueError("bad input")

    async def second(value: str) -> str:
        return value

    group = AgentGroup(name="g", topology={first: Edge(to=(second,)), second: Edge.terminal()})
    result = await runtime.run_group(group, TaskSpec(input="x"))
    assert isinstance(result.error, ValueError)
    assert result.status == {"first": "failed", "second": "upstream_failed"}
    assert result.results["first"].attempts == 1


async def test_cancelling_the_caller_propagates_and_stops_every_node(
    runtime: AgentRuntime,
) -> None:
    never = anyio.Event()
    saw: list[str] = []
    both_running = anyio.Event()
    running = 0
    returned: list[Any] = []

    async def blocked(value: str, ctx: AgentContext) -> str:
        nonlocal running
        running += 1
        if running == 2:
            both_running.set()
        try:
            await never.wait()
        except anyio.get_cancelled_exc_class():
            saw.append(ctx.agent)
            raise
        return value

    async def a(value: str, ctx: AgentContext) -> str:
        return await blocked(value, ctx)

    async def b(value: str, ctx: AgentContext) -> str:
        return await blocked(value, ctx)

    group = two_branches(a, b, fail_fast=False)
    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:

            async def caller() -> None:
                returned.append(await runtime.run_group(group, TaskSpec(input="x")))

            tg.start_soon(caller)
            await both_running.wait()
            tg.cancel_scope.cancel()
    assert returned == []  # cancellation is not a result
    assert sorted(saw) == ["a", "b"]


async def test_fail_fast_keeps_what_a_sibling_cut_off_mid_run_had_spent(
    runtime: AgentRuntime,
) -> None:
    b_spent = anyio.Event()
    never = anyio.Event()

    async def a(value: str) -> str:
        await b_spent.wait()
        raise RuntimeError("a broke")

    async def b(value: str, ctx: AgentContext) -> str:
        ctx.report_usage(input_tokens=7, output_tokens=2, requests=1)
        b_spent.set()
        await never.wait()
        return "b"

    with anyio.fail_after(HANG_GUARD):
        result = await runtime.run_group(two_branches(a, b), TaskSpec(input="x"))
    cut = result.results["b"]
    assert result.status["b"] == "cancelled"
    assert isinstance(cut.error, TaskCancelledError)
    assert (cut.usage.input_tokens, cut.usage.output_tokens, cut.attempts) == (7, 2, 1)
    assert result.usage.input_tokens == 7


async def test_fail_fast_keeps_what_a_cut_off_fan_out_had_spent(runtime: AgentRuntime) -> None:
    waiting = 0
    both_waiting = anyio.Event()
    never = anyio.Event()

    async def a(value: str) -> str:
        await both_waiting.wait()
        raise RuntimeError("a broke")

    async def b(value: str) -> Items:
        return Items(items=[1, 10, 100])

    async def worker(item: int, ctx: AgentContext) -> int:
        nonlocal waiting
        ctx.report_usage(input_tokens=item)
        if item == 1:
            return item  # this slot finishes before the group is cancelled
        waiting += 1
        if waiting == 2:
            both_waiting.set()
        await never.wait()
        return item

    group = fan_out_beside(a, b, worker)
    with anyio.fail_after(HANG_GUARD):
        result = await runtime.run_group(group, TaskSpec(input="x"))
    cut = result.results["worker"]
    assert result.status["worker"] == "cancelled"
    assert isinstance(cut.error, TaskCancelledError)
    # The finished slot and the two cut off mid-run: nothing they spent is lost.
    assert (cut.usage.input_tokens, cut.attempts) == (111, 3)
    assert result.usage.input_tokens == 111


async def test_fail_fast_keeps_each_nodes_own_spend_when_nodes_share_a_task_id(
    runtime: AgentRuntime,
) -> None:
    in_flight = 0
    both_in = anyio.Event()
    never = anyio.Event()

    async def a(value: str) -> str:
        await both_in.wait()
        raise RuntimeError("a broke")

    def spending(tokens: int) -> Any:
        async def spend(value: str, ctx: AgentContext) -> str:
            nonlocal in_flight
            ctx.report_usage(input_tokens=tokens)
            in_flight += 1
            if in_flight == 2:
                both_in.set()
            await never.wait()
            return value

        spend.__name__ = f"spend{tokens}"
        return spend

    b, c = spending(7), spending(5)
    same_id = Edge(to=(a, b, c), mapper=lambda v: TaskSpec(input=v, task_id="req-42"))
    group = AgentGroup(
        name="g",
        topology={start: same_id, a: Edge.terminal(), b: Edge.terminal(), c: Edge.terminal()},
    )
    with anyio.fail_after(HANG_GUARD):
        result = await runtime.run_group(group, TaskSpec(input="x"))
    # Both were cut off with the same task id; each keeps only what it spent itself.
    assert result.results["spend7"].usage.input_tokens == 7
    assert result.results["spend5"].usage.input_tokens == 5
    assert result.usage.input_tokens == 12
