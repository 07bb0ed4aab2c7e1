"""AgentRuntime.gather: order, isolation, the concurrency cap, fail_fast and cancellation."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from pydantic import ValidationError
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import murmur
from murmur import (
    AgentContext,
    AgentResult,
    AgentRuntime,
    RuntimeOptions,
    TaskCancelledError,
    TaskSpec,
)
from support import cancel_when_ready

pytestmark = pytest.mark.anyio


class Gate:
    """Counts agents in flight, remembers the peak, and holds them until released."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.active = 0
        self.peak = 0
        self.started = 0
        self.finished = 0
        self.reached = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self, value: int) -> int:
        self.active += 1
        self.started += 1
        self.peak = max(self.peak, self.active)
        if self.active == self.expected:
            self.reached.set()
        try:
            await self.release.wait()
        finally:
            self.active -= 1
        self.finished += 1
        return value


async def run_against_gate(
    runtime: AgentRuntime, gate: Gate, count: int, **kwargs: Any
) -> list[AgentResult[Any]]:
    """Gather ``count`` tasks through ``gate``; release them once the gate is full and idle."""
    results: list[AgentResult[Any]] = []

    async def go() -> None:
        results.extend(
            await runtime.gather(gate, [TaskSpec(input=i) for i in range(count)], **kwargs)
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(go)
        await gate.reached.wait()
        # Everything that could start has had its chance to: the cap must hold right now.
        await anyio.wait_all_tasks_blocked()
        assert gate.active == gate.expected
        gate.release.set()
    return results


# -- results ---------------------------------------------------------------------------------


async def test_results_come_back_in_input_order(runtime: AgentRuntime) -> None:
    """Tasks finish in reverse order; their results still line up with the inputs."""
    count = 6
    done = [anyio.Event() for _ in range(count)]
    finish_order: list[int] = []

    async def reverse(value: int) -> str:
        if value + 1 < count:
            await done[value + 1].wait()  # the last task finishes first
        finish_order.append(value)
        done[value].set()
        return f"out-{value}"

    tasks = [TaskSpec(input=i) for i in range(count)]
    results = await runtime.gather(reverse, tasks)
    assert finish_order == list(reversed(range(count)))
    assert [r.output for r in results] == [f"out-{i}" for i in range(count)]
    assert [r.task_id for r in results] == [t.task_id for t in tasks]
    assert all(r.agent == "reverse" for r in results)


async def test_failures_stay_in_their_slots(runtime: AgentRuntime) -> None:
    errors = {1: ValueError("one"), 3: KeyError("three")}

    async def sometimes(value: int) -> int:
        if value in errors:
            raise errors[value]
        return value * 10

    results = await runtime.gather(sometimes, [TaskSpec(input=i) for i in range(5)])
    assert [r.is_ok() for r in results] == [True, False, True, False, True]
    assert results[1].error is errors[1]
    assert results[3].error is errors[3]
    assert [r.output for r in results] == [0, None, 20, None, 40]


async def test_each_slot_has_its_own_context_and_usage(runtime: AgentRuntime) -> None:
    contexts: list[AgentContext] = []

    async def spend(value: int, ctx: AgentContext) -> int:
        contexts.append(ctx)
        ctx.report_usage(input_tokens=value, requests=1)
        return value

    results = await runtime.gather(spend, [TaskSpec(input=i) for i in (1, 2, 3)])
    assert [r.usage.input_tokens for r in results] == [1, 2, 3]
    assert [r.usage.requests for r in results] == [1, 1, 1]
    assert len({id(c) for c in contexts}) == 3
    assert len({c.trace_id for c in contexts}) == 1  # one call, one trace
    assert {c.depth for c in contexts} == {0}


async def test_gather_of_nothing_is_an_empty_list(runtime: AgentRuntime) -> None:
    async def never(value: object) -> None:
        raise AssertionError("no task to run")

    assert await runtime.gather(never, []) == []


async def test_gather_accepts_any_iterable_of_taskspecs(runtime: AgentRuntime) -> None:
    async def echo(value: int) -> int:
        return value

    def specs() -> Iterator[TaskSpec]:
        for i in range(4):
            yield TaskSpec(input=i)

    results = await runtime.gather(echo, specs())
    assert [r.output for r in results] == [0, 1, 2, 3]
    results = await runtime.gather(echo, (TaskSpec(input=i) for i in range(2)))
    assert [r.output for r in results] == [0, 1]


async def test_gather_rejects_bad_task_lists(runtime: AgentRuntime) -> None:
    async def echo(value: int) -> int:
        return value

    with pytest.raises(TypeError, match=r"tasks\[1\]"):
        await runtime.gather(echo, [TaskSpec(input=1), 2])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="iterable"):
        await runtime.gather(echo, "abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="iterable"):
        await runtime.gather(echo, 5)  # type: ignore[arg-type]


async def test_same_agent_twice_in_one_batch_of_the_same_spec(runtime: AgentRuntime) -> None:
    async def echo(value: int) -> int:
        return value

    spec = TaskSpec(input=7)
    results = await runtime.gather(echo, [spec, spec])
    assert [r.output for r in results] == [7, 7]
    assert results[0].task_id == results[1].task_id == spec.task_id


# -- max_concurrency -------------------------------------------------------------------------


@pytest.mark.parametrize("cap", [1, 3, 7])
async def test_max_concurrency_is_a_hard_cap(runtime: AgentRuntime, cap: int) -> None:
    gate = Gate(expected=cap)
    results = await run_against_gate(runtime, gate, count=20, max_concurrency=cap)
    assert gate.peak == cap
    assert gate.finished == gate.started == 20
    assert [r.output for r in results] == list(range(20))


async def test_cap_larger_than_the_batch_runs_everything_at_once(runtime: AgentRuntime) -> None:
    gate = Gate(expected=5)
    results = await run_against_gate(runtime, gate, count=5, max_concurrency=50)
    assert gate.peak == 5
    assert all(r.is_ok() for r in results)


async def test_default_cap_is_100(runtime: AgentRuntime) -> None:
    assert runtime.options.max_concurrency == 100
    gate = Gate(expected=100)
    results = await run_against_gate(runtime, gate, count=150)
    assert gate.peak == 100
    assert len(results) == 150
    assert all(r.is_ok() for r in results)


async def test_runtime_options_set_the_default_cap() -> None:
    async with AgentRuntime(options=RuntimeOptions(max_concurrency=4)) as runtime:
        gate = Gate(expected=4)
        await run_against_gate(runtime, gate, count=12)
        assert gate.peak == 4
        # An explicit max_concurrency overrides the runtime's default.
        gate = Gate(expected=2)
        await run_against_gate(runtime, gate, count=12, max_concurrency=2)
        assert gate.peak == 2


async def test_cap_holds_for_pydantic_ai_agents(runtime: AgentRuntime) -> None:
    """The cap also holds when calls run through pydantic-ai (over the bridge under Trio)."""
    cap = 3
    lock = threading.Lock()
    active = 0
    peak = 0
    total = 0
    reached = threading.Event()
    release = threading.Event()

    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal active, peak, total
        with lock:
            active += 1
            total += 1
            peak = max(peak, active)
            if active == cap:
                reached.set()
        try:
            assert await anyio.to_thread.run_sync(release.wait, 30)
        finally:
            with lock:
                active -= 1
        return ModelResponse(parts=[TextPart("ok")])

    agent = murmur.Agent(name="capped", model=FunctionModel(model_fn))
    results: list[AgentResult[Any]] = []

    async def go() -> None:
        tasks = [TaskSpec(input=str(i)) for i in range(10)]
        results.extend(await runtime.gather(agent, tasks, max_concurrency=cap))

    async with anyio.create_task_group() as tg:
        tg.start_soon(go)
        assert await anyio.to_thread.run_sync(reached.wait, 30)
        await anyio.wait_all_tasks_blocked()
        with lock:
            assert active == cap
        release.set()
    assert all(r.is_ok() for r in results)
    assert total == 10
    assert peak == cap


@pytest.mark.parametrize("bad", [0, -1, -100])
async def test_max_concurrency_below_one_is_a_value_error(runtime: AgentRuntime, bad: int) -> None:
    ran: list[int] = []

    async def echo(value: int) -> int:
        ran.append(value)
        return value

    with pytest.raises(ValueError, match="max_concurrency"):
        await runtime.gather(echo, [TaskSpec(input=1)], max_concurrency=bad)
    with pytest.raises(ValueError, match="max_concurrency"):
        await runtime.gather(echo, [], max_concurrency=bad)
    assert ran == []


async def test_max_concurrency_must_be_an_int(runtime: AgentRuntime) -> None:
    async def echo(value: int) -> int:
        return value

    for bad in (1.5, "3", True):
        with pytest.raises(ValueError, match="max_concurrency"):
            await runtime.gather(echo, [TaskSpec(input=1)], max_concurrency=bad)  # type: ignore[arg-type]


async def test_runtime_options_reject_a_cap_below_one() -> None:
    with pytest.raises(ValidationError):
        RuntimeOptions(max_concurrency=0)
    with pytest.raises(ValidationError):
        RuntimeOptions(max_concurrency=-5)


# -- fail_fast -------------------------------------------------------------------------------


async def test_without_fail_fast_a_failure_cancels_nothing(runtime: AgentRuntime) -> None:
    async def one_fails(value: int) -> int:
        await anyio.lowlevel.checkpoint()
        if value == 0:
            raise ValueError("first")
        return value

    results = await runtime.gather(one_fails, [TaskSpec(input=i) for i in range(5)])
    assert isinstance(results[0].error, ValueError)
    assert [r.output for r in results[1:]] == [1, 2, 3, 4]


async def test_fail_fast_cancels_in_flight_tasks(runtime: AgentRuntime) -> None:
    count = 6
    others_started = 0
    all_others_started = anyio.Event()
    cleaned_up: list[int] = []
    completed: list[int] = []

    async def agent(value: int) -> int:
        nonlocal others_started
        if value == 0:
            await all_others_started.wait()  # fail only once everybody else is in flight
            raise RuntimeError("first failure")
        others_started += 1
        if others_started == count - 1:
            all_others_started.set()
        try:
            await anyio.Event().wait()  # never set: only cancellation ends this
            completed.append(value)
            return value
        finally:
            cleaned_up.append(value)

    tasks = [TaskSpec(input=i) for i in range(count)]
    results = await runtime.gather(agent, tasks, fail_fast=True)

    assert isinstance(results[0].error, RuntimeError)
    for result, task in zip(results[1:], tasks[1:], strict=True):
        assert isinstance(result.error, TaskCancelledError)
        assert result.output is None
        assert result.task_id == task.task_id
        assert result.agent == "agent"
        assert tasks[0].task_id in str(result.error)  # names the task that failed first
    assert sorted(cleaned_up) == list(range(1, count))
    assert completed == []


async def test_fail_fast_results_keep_what_cut_off_tasks_had_spent(runtime: AgentRuntime) -> None:
    in_flight = 0
    all_in_flight = anyio.Event()

    async def agent(value: int, ctx: AgentContext) -> int:
        nonlocal in_flight
        if value == 0:
            await all_in_flight.wait()
            raise RuntimeError("first failure")
        ctx.report_usage(input_tokens=10 * value, output_tokens=1, requests=1)
        in_flight += 1
        if in_flight == 3:
            all_in_flight.set()
        await anyio.Event().wait()  # only cancellation ends this
        return value

    results = await runtime.gather(
        agent, [TaskSpec(input=i) for i in range(5)], max_concurrency=4, fail_fast=True
    )
    assert isinstance(results[0].error, RuntimeError)
    for value in (1, 2, 3):
        cut = results[value]
        assert isinstance(cut.error, TaskCancelledError)
        # Cut off mid-run: its tokens, its attempt and its time are still in the result.
        assert (cut.usage.input_tokens, cut.usage.output_tokens) == (10 * value, 1)
        assert cut.attempts == 1
        assert cut.duration > 0
    never = results[4]  # queued behind the cap: never started, spent nothing
    assert isinstance(never.error, TaskCancelledError)
    assert (never.usage.total_tokens, never.attempts, never.duration) == (0, 0, 0.0)


async def test_fail_fast_accounts_for_each_run_of_a_repeated_task_spec(
    runtime: AgentRuntime,
) -> None:
    runs = 0
    both_in = anyio.Event()

    async def agent(value: str, ctx: AgentContext) -> str:
        nonlocal runs
        if value == "fail":
            await both_in.wait()
            raise RuntimeError("first failure")
        runs += 1
        ctx.report_usage(input_tokens=runs)  # 1 for the first run, 2 for the second
        if runs == 2:
            both_in.set()
        await anyio.Event().wait()
        return value

    same = TaskSpec(input="same")  # one spec, one task id, handed in twice
    results = await runtime.gather(agent, [same, same, TaskSpec(input="fail")], fail_fast=True)
    assert [r.task_id for r in results[:2]] == [same.task_id, same.task_id]
    assert all(isinstance(r.error, TaskCancelledError) for r in results[:2])
    # Each slot has what its own run spent: nothing counted twice, nothing lost.
    assert sorted(r.usage.input_tokens for r in results[:2]) == [1, 2]


async def test_fail_fast_never_starts_queued_tasks(runtime: AgentRuntime) -> None:
    started: list[int] = []

    async def agent(value: int) -> int:
        started.append(value)
        if value == 1:
            raise ValueError("second task fails")
        return value

    results = await runtime.gather(
        agent, [TaskSpec(input=i) for i in range(5)], max_concurrency=1, fail_fast=True
    )
    assert started == [0, 1]
    assert results[0].output == 0
    assert isinstance(results[1].error, ValueError)
    for result in results[2:]:
        assert isinstance(result.error, TaskCancelledError)
        assert result.attempts == 0


async def test_fail_fast_with_no_failure_returns_everything(runtime: AgentRuntime) -> None:
    async def fine(value: int) -> int:
        await anyio.lowlevel.checkpoint()
        return value

    results = await runtime.gather(fine, [TaskSpec(input=i) for i in range(10)], fail_fast=True)
    assert [r.output for r in results] == list(range(10))


async def test_fail_fast_keeps_results_that_finished_before_the_failure(
    runtime: AgentRuntime,
) -> None:
    first_done = anyio.Event()

    async def agent(value: int) -> int:
        if value == 0:
            first_done.set()
            return 0
        if value == 1:
            await first_done.wait()
            raise ValueError("late failure")
        await anyio.Event().wait()  # cancelled by fail_fast
        return value

    results = await runtime.gather(agent, [TaskSpec(input=i) for i in range(4)], fail_fast=True)
    assert results[0].unwrap() == 0
    assert isinstance(results[1].error, ValueError)
    assert all(isinstance(r.error, TaskCancelledError) for r in results[2:])


async def test_fail_fast_cancels_pydantic_ai_calls(runtime: AgentRuntime) -> None:
    lock = threading.Lock()
    started = 0
    all_blocked = threading.Event()
    cleaned_up = 0

    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal started, cleaned_up
        with lock:
            started += 1
            if started == 3:
                all_blocked.set()
        try:
            await anyio.Event().wait()  # never set
        finally:
            with lock:
                cleaned_up += 1
        return ModelResponse(parts=[TextPart("never")])

    stuck = murmur.Agent(name="stuck", model=FunctionModel(model_fn))

    async def fails_when_all_blocked(value: str, ctx: AgentContext) -> str:
        if value == "fail":
            assert await anyio.to_thread.run_sync(all_blocked.wait, 30)
            raise ValueError("boom")
        return (await ctx.run(stuck, TaskSpec(input=value))).unwrap()

    results = await runtime.gather(
        fails_when_all_blocked,
        [TaskSpec(input="fail"), *(TaskSpec(input=str(i)) for i in range(3))],
        fail_fast=True,
    )
    assert isinstance(results[0].error, ValueError)
    assert all(isinstance(r.error, TaskCancelledError) for r in results[1:])
    assert cleaned_up == 3


# -- cancellation from outside ---------------------------------------------------------------


async def test_cancelling_a_gather_cancels_every_in_flight_call(runtime: AgentRuntime) -> None:
    count = 8
    in_flight = 0
    all_in_flight = anyio.Event()
    cleaned_up: list[int] = []
    completed: list[int] = []

    async def blocks(value: int) -> int:
        nonlocal in_flight
        in_flight += 1
        if in_flight == count:
            all_in_flight.set()
        try:
            await anyio.Event().wait()  # never set
            completed.append(value)
            return value
        finally:
            cleaned_up.append(value)

    outcome = await cancel_when_ready(
        lambda: runtime.gather(blocks, [TaskSpec(input=i) for i in range(count)]),
        all_in_flight.wait,
    )

    # By the time the cancelled scope has exited, every agent has run its clean-up.
    assert outcome.cancelled_caught
    assert sorted(cleaned_up) == list(range(count))
    assert completed == []
    assert outcome.returned == []  # cancellation is not a list of results
    assert len(outcome.propagated) == 1


async def test_cancelling_a_gather_cancels_every_pydantic_ai_call(runtime: AgentRuntime) -> None:
    count = 5
    lock = threading.Lock()
    started = 0
    all_started = threading.Event()
    cleaned_up = 0
    completed = 0

    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal started, cleaned_up, completed
        with lock:
            started += 1
            if started == count:
                all_started.set()
        try:
            await anyio.Event().wait()  # never set
            with lock:
                completed += 1
        finally:
            with lock:
                cleaned_up += 1
        return ModelResponse(parts=[TextPart("never")])

    agent = murmur.Agent(name="stuck", model=FunctionModel(model_fn))
    returned: list[list[AgentResult[Any]]] = []

    async def caller() -> None:
        tasks = [TaskSpec(input=str(i)) for i in range(count)]
        returned.append(await runtime.gather(agent, tasks))

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            assert await anyio.to_thread.run_sync(all_started.wait, 30)
            scope.cancel()

    assert scope.cancelled_caught
    assert returned == []
    assert (cleaned_up, completed) == (count, 0)


async def test_cancelling_a_gather_never_starts_the_queued_tasks(runtime: AgentRuntime) -> None:
    started: list[int] = []
    cleaned_up: list[int] = []
    two_running = anyio.Event()

    async def blocks(value: int) -> int:
        started.append(value)
        if len(started) == 2:
            two_running.set()
        try:
            await anyio.Event().wait()
        finally:
            cleaned_up.append(value)
        return value

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: runtime.gather(
                    blocks, [TaskSpec(input=i) for i in range(10)], max_concurrency=2
                )
            )
            await two_running.wait()
            scope.cancel()

    assert scope.cancelled_caught
    assert sorted(started) == [0, 1]
    assert sorted(cleaned_up) == [0, 1]
    # Nothing starts afterwards either: let every task run until blocked.
    await anyio.wait_all_tasks_blocked()
    assert sorted(started) == [0, 1]


async def test_cancelling_one_gather_leaves_another_running(runtime: AgentRuntime) -> None:
    blocked = anyio.Event()
    release = anyio.Event()
    cancelled: list[str] = []

    async def agent(value: str) -> str:
        if value == "doomed":
            blocked.set()
            try:
                await anyio.Event().wait()
            finally:
                cancelled.append(value)
        await release.wait()
        return value

    survivor: list[AgentResult[Any]] = []

    async def keep() -> None:
        survivor.extend(await runtime.gather(agent, [TaskSpec(input="kept")]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(keep)
        with anyio.CancelScope() as doomed_scope:
            async with anyio.create_task_group() as inner:
                inner.start_soon(lambda: runtime.gather(agent, [TaskSpec(input="doomed")]))
                await blocked.wait()
                doomed_scope.cancel()
        release.set()

    assert cancelled == ["doomed"]
    assert [r.unwrap() for r in survivor] == ["kept"]


async def test_a_single_taskspec_is_refused_with_the_fix_shown(runtime: AgentRuntime) -> None:
    async def agent(value: str) -> str:
        return value

    with pytest.raises(TypeError, match=r"got a single TaskSpec.*runtime\.run\(agent, task\)"):
        await runtime.gather(agent, TaskSpec(input="x"))  # type: ignore[arg-type]


async def test_gather_sync_inside_a_running_loop_says_to_await_gather() -> None:
    async def agent(value: str) -> str:
        return value

    runtime = AgentRuntime()
    with pytest.raises(RuntimeError, match=r"await runtime\.gather\(\.\.\.\)"):
        runtime.gather_sync(agent, [TaskSpec(input="x")])
    with pytest.raises(RuntimeError, match=r"already running.*await runtime\.run\(\.\.\.\)"):
        runtime.run_sync(agent, TaskSpec(input="x"))
    await runtime.aclose()


async def test_an_input_a_pydantic_ai_agent_cannot_send_is_refused_at_the_call() -> None:
    from pydantic_ai.models.test import TestModel

    class Opaque:
        """Not JSON: no model could be sent this."""

    agent = murmur.Agent(name="model", model=TestModel())
    ran: list[str] = []

    async def tally(value: object) -> str:
        ran.append(type(value).__name__)
        return "ran"

    async with AgentRuntime() as runtime:
        tasks = [TaskSpec(input="fine"), TaskSpec(input={"ok": 1}), TaskSpec(input=Opaque())]
        with pytest.raises(TypeError, match=r"tasks\[2\]\.input for agent 'model'.*Opaque"):
            await runtime.gather(agent, tasks)
        with pytest.raises(murmur.InvalidTypeError, match=r"task\.input for agent 'model'"):
            await runtime.run(agent, TaskSpec(input=Opaque()))
        # Nothing ran; valid inputs still go through afterwards; function agents take any.
        results = await runtime.gather(agent, tasks[:2])
        assert [r.is_ok() for r in results] == [True, True]
        assert (await runtime.run(tally, TaskSpec(input=Opaque()))).is_ok()
