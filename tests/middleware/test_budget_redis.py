"""Fleet-wide token budgets through Redis: runtimes and processes sharing one budget never
spend beyond the documented bound, wait first come first served across the fleet, give
back what cancelled waiters and dead processes held, and an unreachable store fails closed
or open, never hanging. Real Redis on 127.0.0.1:6379; every test uses its own budget names
and deletes their keys."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc
import pytest
import redis
from pydantic_ai import RunContext
from tests.distributed.brokers import require
from tests.distributed.proxy import tcp_proxy
from tests.middleware import fleet
from tests.middleware.fleet import fresh

import murmur
from murmur import (
    AgentContext,
    AgentRuntime,
    BudgetExceededError,
    BudgetStoreError,
    InvalidStateError,
    RuntimeOptions,
    TaskSpec,
    TokenBudget,
)
from murmur.events import MultiEventEmitter
from support import stepping_model

pytestmark = pytest.mark.anyio

APP = Path(__file__).with_name("budget_fleet_app.py")
QUIET = MultiEventEmitter([])


def state(name: str) -> dict[str, str]:
    client = redis.Redis.from_url(require("redis"), decode_responses=True)
    try:
        return client.hgetall(f"murmur:budget:{name}")
    finally:
        client.close()


def queued(name: str) -> int:
    client = redis.Redis.from_url(require("redis"))
    try:
        return int(client.zcard(f"murmur:budget:{name}:q"))
    finally:
        client.close()


def stored(name: str, limit: int, **options: Any) -> TokenBudget:
    return TokenBudget(limit=limit, store=require("redis"), name=name, **options)


def pattern(results: list[Any]) -> str:
    """``o`` for a task that ran, ``x`` for one refused, in input order."""
    return "".join("o" if r.is_ok() else "x" for r in results)


async def test_runtimes_share_one_stored_budget(names: list[str]) -> None:
    """Three runtimes, each with its own TokenBudget object (their only shared state is in
    Redis), 45 tasks of 100 tokens under limit=2000: exactly 20 run, and in each runtime
    the tasks that ran come before those refused."""
    name = fresh(names, "shared")

    async def spend(value: int, ctx: AgentContext) -> int:
        await anyio.sleep(0.001)
        ctx.report_usage(input_tokens=60, output_tokens=40)
        return value

    budgets = [stored(name, 2_000) for _ in range(3)]
    outcomes: list[list[Any]] = []
    async with (
        AgentRuntime(options=RuntimeOptions(token_budget=budgets[0]), event_emitter=QUIET) as a,
        AgentRuntime(options=RuntimeOptions(token_budget=budgets[1]), event_emitter=QUIET) as b,
        AgentRuntime(options=RuntimeOptions(token_budget=budgets[2]), event_emitter=QUIET) as c,
    ):

        async def batch(runtime: AgentRuntime) -> None:
            specs = [TaskSpec(input=i) for i in range(15)]
            outcomes.append(await runtime.gather(spend, specs, max_concurrency=10))

        async with anyio.create_task_group() as tg:
            for runtime in (a, b, c):
                tg.start_soon(batch, runtime)
    results = [r for outcome in outcomes for r in outcome]
    assert sum(r.is_ok() for r in results) == 20
    assert all(isinstance(r.error, BudgetExceededError) for r in results if not r.is_ok())
    for outcome in outcomes:
        ran = pattern(outcome).count("o")
        assert pattern(outcome) == "o" * ran + "x" * (15 - ran)
    fields = state(name)
    assert (fields["used"], fields["reserved"], fields["holders"]) == ("2000", "0", "0")
    # Learnt fleet-wide: 20 settled tasks of agent "spend", 2000 tokens.
    assert (fields["n:spend"], fields["s:spend"]) == ("20", "2000")
    assert max(budget.used for budget in budgets) == 2_000  # as of each one's last round trip


async def test_runs_overshoot_by_at_most_one_response_each_in_flight(names: list[str]) -> None:
    """pydantic-ai runs that never finish, 50 tokens a response, reserve 200 each under
    limit=1000 in two runtimes: each is cut off one response past its reservation, and the
    fleet spends at most limit + one response per reservation in flight (1000 // 200 + 1)."""
    name = fresh(names, "bound")
    limit, reserve, response = 1_000, 200, 50

    def step(ctx: RunContext[AgentContext]) -> str:
        return "again"

    agent = murmur.Agent(name="stepper", model=stepping_model(response, None), tools=(step,))

    outcomes: list[Any] = []

    async def batch() -> None:
        budget = stored(name, limit, reserve_per_task=reserve)
        options = RuntimeOptions(token_budget=budget)
        async with AgentRuntime(options=options, event_emitter=QUIET) as runtime:
            outcomes.extend(await runtime.gather(agent, [TaskSpec(input="go")] * 10))

    async with anyio.create_task_group() as tg:
        tg.start_soon(batch)
        tg.start_soon(batch)
    spent = sum(r.usage.total_tokens for r in outcomes)
    assert all(isinstance(r.error, BudgetExceededError) for r in outcomes)
    ran = [r for r in outcomes if r.attempts]
    assert ran
    assert all(r.usage.total_tokens <= reserve + response for r in ran)
    assert limit <= spent <= limit + (limit // reserve + 1) * response
    assert int(state(name)["used"]) == spent  # every token spent was charged


def test_three_processes_never_spend_beyond_the_bound(tmp_path: Path, names: list[str]) -> None:
    """3 runtimes in 3 processes (two on asyncio, one on Trio) share limit=3000 with
    reservations of 200 and responses of 50 tokens, every run going on until cut off: what
    the fleet spent, summed from every task's usage, stays within limit + one response per
    reservation in flight, and the store charged exactly that."""
    name = fresh(names, "fleet")
    limit, reserve, response, tasks = 3_000, 200, 50, 12
    outs = [tmp_path / f"p{i}.json" for i in range(3)]
    fleet.run(
        APP,
        [
            [name, str(limit), str(reserve), str(response), str(tasks), backend, str(out)]
            for out, backend in zip(outs, ["asyncio", "trio", "asyncio"], strict=True)
        ],
    )
    reports = [json.loads(out.read_text()) for out in outs]
    spent = sum(sum(report["spent"]) for report in reports)
    refused = sum(report["refused"] for report in reports)
    assert refused > 0  # the budget ran out, and the rest were refused
    assert limit <= spent <= limit + (limit // reserve + 1) * response
    fields = state(name)
    assert (int(fields["used"]), fields["reserved"], fields["holders"]) == (spent, "0", "0")


async def test_waiters_are_served_in_the_order_they_reached_redis(names: list[str]) -> None:
    """Three tasks of runtime A hold the whole budget; then B, A and B again ask, in that
    order: as the holders settle one by one, each freed place goes to the waiter that
    asked first, across runtimes."""
    name = fresh(names, "fifo")
    release = {value: anyio.Event() for value in ("hold0", "hold1", "hold2", "waiters")}
    started: list[str] = []

    async def work(value: str) -> str:
        started.append(value)
        # Every task keeps its place until let go: each release frees exactly one.
        await release[value if value.startswith("hold") else "waiters"].wait()
        return value

    def runtime() -> AgentRuntime:
        budget = stored(name, 300, reserve_per_task=100)
        return AgentRuntime(options=RuntimeOptions(token_budget=budget), event_emitter=QUIET)

    async with runtime() as a, runtime() as b, anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(a.run, work, TaskSpec(input=f"hold{i}"))
        await until(lambda: len(started) == 3)
        for who, value in ((b, "b1"), (a, "a4"), (b, "b2")):
            waiting = queued(name)
            tg.start_soon(who.run, work, TaskSpec(input=value))
            await until(lambda waiting=waiting: queued(name) == waiting + 1)
        for i in range(3):
            release[f"hold{i}"].set()  # the place it frees goes to the longest waiting
            await until(lambda i=i: len(started) == 4 + i)
        release["waiters"].set()
    assert started[3:] == ["b1", "a4", "b2"]
    assert state(name)["reserved"] == "0"


async def until(check: Any) -> None:
    """Wait for ``check()`` (Redis state the test needs), at most 10 s."""
    with anyio.fail_after(10):  # a bound on the test, not a measurement
        while not check():
            await anyio.sleep(0.005)  # polling Redis for the state the test needs


async def test_a_cancelled_waiter_gives_back_its_place(names: list[str]) -> None:
    name = fresh(names, "cancel")
    go = anyio.Event()

    async def hold(value: int) -> int:
        await go.wait()
        return value

    options = RuntimeOptions(token_budget=stored(name, 500))
    async with (
        AgentRuntime(options=options, event_emitter=QUIET) as runtime,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(runtime.run, hold, TaskSpec(input=0))  # alone: it reserves all 500
        await until(lambda: state(name).get("holders") == "1")
        async with anyio.create_task_group() as inner:
            inner.start_soon(runtime.run, hold, TaskSpec(input=1))
            await until(lambda: queued(name) == 1)
            inner.cancel_scope.cancel()
        assert queued(name) == 0
        assert (state(name)["reserved"], state(name)["holders"]) == ("500", "1")
        go.set()
    assert (state(name)["reserved"], state(name)["holders"]) == ("0", "0")


async def test_spawned_children_borrow_from_their_parent(names: list[str]) -> None:
    name = fresh(names, "children")

    async def child(value: int, ctx: AgentContext) -> int:
        ctx.report_usage(output_tokens=10)
        return value

    async def parent(value: int, ctx: AgentContext) -> int:
        results = await ctx.gather(child, [TaskSpec(input=i) for i in range(5)])
        ctx.report_usage(output_tokens=5)
        return sum(r.unwrap() for r in results)

    options = RuntimeOptions(token_budget=stored(name, 1_000, reserve_per_task=100))
    async with AgentRuntime(options=options, event_emitter=QUIET) as runtime:
        results = await runtime.gather(parent, [TaskSpec(input=i) for i in range(4)])
    assert [r.output for r in results] == [10] * 4
    fields = state(name)
    assert (fields["used"], fields["reserved"], fields["holders"]) == ("220", "0", "0")


def test_a_dead_process_s_reservation_is_charged_after_its_lease(
    tmp_path: Path, names: list[str]
) -> None:
    """A process holding the whole budget is killed: after its lease, what it held is
    charged as spent, so a waiting task of another process is refused instead of waiting
    for it forever."""
    name = fresh(names, "dead")
    out = tmp_path / "holder.json"
    holder = fleet.start(APP, [[name, "1000", "1000", "1", "0", "asyncio", str(out)]])
    try:
        fleet.wait_ready(holder, [out])
    finally:
        holder[0].send_signal(signal.SIGKILL)
        holder[0].wait()
    assert state(name)["reserved"] == "1000"
    # Its lease is 600 s; make it lapse now, as if that time had passed.
    client = redis.Redis.from_url(require("redis"))
    try:
        key = f"murmur:budget:{name}:px"
        for member in client.zrange(key, 0, -1):
            client.zadd(key, {member: 0})
    finally:
        client.close()

    async def fine(value: int) -> int:
        return value

    async def main() -> Any:
        options = RuntimeOptions(token_budget=stored(name, 1_000))
        async with AgentRuntime(options=options, event_emitter=QUIET) as runtime:
            with anyio.fail_after(10):  # a bound on the test, not a measurement
                return await runtime.run(fine, TaskSpec(input=1))

    for backend in ("asyncio", "trio"):
        result = anyio.run(main, backend=backend)
        assert isinstance(result.error, BudgetExceededError)
    fields = state(name)
    assert (fields["used"], fields["reserved"], fields["holders"]) == ("1000", "0", "0")


def test_a_stored_budget_is_not_reserved_directly(names: list[str]) -> None:
    budget = stored(fresh(names, "direct"), 100)
    with pytest.raises(InvalidStateError, match="shared through a store"):
        budget.try_reserve()
    with pytest.raises(InvalidStateError, match="shared through a store"):
        budget.settle(1, 1)


@pytest.mark.parametrize("bad", [{"store": "memcached://x"}, {"on_store_error": "maybe"}])
def test_bad_store_options_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="TokenBudget"):
        TokenBudget(limit=10, **bad)


# -- outages ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def silent_store() -> AsyncIterator[str]:
    """The URL of a server that accepts connections and reads, and never answers."""

    async def swallow(client: anyio.abc.SocketStream) -> None:
        async with client:
            async for _ in client:
                pass

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, swallow)
        yield f"redis://127.0.0.1:{port}"
        tg.cancel_scope.cancel()


async def fine(value: int, ctx: AgentContext) -> int:
    ctx.report_usage(output_tokens=10)
    return value


UNANSWERING = {"refused": "redis://127.0.0.1:1", "unroutable": "redis://10.255.255.1:6379"}


@pytest.mark.parametrize("store", ["refused", "unroutable", "silent"])
async def test_a_store_that_does_not_answer_fails_closed_in_time(store: str) -> None:
    async with contextlib.AsyncExitStack() as stack:
        url = UNANSWERING.get(store) or await stack.enter_async_context(silent_store())
        budget = TokenBudget(limit=1_000, store=url, store_timeout=0.3, name=store)
        options = RuntimeOptions(token_budget=budget)
        async with AgentRuntime(options=options, event_emitter=QUIET) as runtime:
            with anyio.fail_after(10):  # a bound on the test, not a measurement
                result = await runtime.run(fine, TaskSpec(input=1))
    assert isinstance(result.error, BudgetStoreError)
    assert isinstance(result.error, ConnectionError)
    assert "fails closed" in str(result.error)


@pytest.mark.parametrize("on_store_error", ["closed", "open"])
async def test_a_store_that_goes_down_and_comes_back(
    names: list[str], on_store_error: Literal["closed", "open"]
) -> None:
    """While the store is down, closed: tasks are refused with BudgetStoreError; open: they
    run unbudgeted (no cap), and what they spent is charged once it answers again. Either
    way nothing hangs, and nothing is left reserved."""
    name = fresh(names, on_store_error)
    caps: list[int | None] = []

    async def capped(value: int, ctx: AgentContext) -> int:
        caps.append(ctx.token_cap)
        ctx.report_usage(output_tokens=10)
        return value

    require("redis")
    async with tcp_proxy(6379) as store:
        budget = TokenBudget(
            limit=1_000,
            store=store.url("redis"),
            store_timeout=0.5,
            name=name,
            on_store_error=on_store_error,
        )
        options = RuntimeOptions(token_budget=budget)
        async with AgentRuntime(options=options, event_emitter=QUIET) as runtime:
            assert (await runtime.run(capped, TaskSpec(input=0))).is_ok()
            await store.cut()
            with anyio.fail_after(10):  # a bound on the test, not a measurement
                down = await runtime.gather(capped, [TaskSpec(input=i) for i in range(3)])
            if on_store_error == "closed":
                assert all(isinstance(r.error, BudgetStoreError) for r in down)
            else:
                assert [r.output for r in down] == [0, 1, 2]
                assert caps[1:] == [None] * 3
            store.restore()
            assert (await runtime.run(capped, TaskSpec(input=9))).is_ok()
    fields = state(name)
    used = 20 if on_store_error == "closed" else 50
    assert (fields["used"], fields["reserved"], fields["holders"]) == (str(used), "0", "0")
