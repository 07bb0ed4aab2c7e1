"""A worker's rate limits (``Worker(rate_limits=...)``, for the children its tasks spawn;
a ``RateLimitMiddleware`` in its middleware, for the tasks it runs) in its heartbeats and
its status line: each limit's rate factor, waiting calls and pause."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import anyio
import pytest

from murmur import AgentContext, AgentRuntime, EventType, RateLimit, TaskSpec
from murmur.cli._serve import _console_line, _LiveReporter
from murmur.distributed import BrokerTransport, Worker
from murmur.middleware import RateLimitMiddleware
from support import FakeClock, Recorder, throttled_once

pytestmark = pytest.mark.anyio

URL = "memory://worker-limits"
MODEL = "openai:gpt-4o"


class Beats(Recorder):
    """Keeps the worker's events; ``beat()`` waits for the next heartbeat."""

    def __init__(self) -> None:
        super().__init__()
        self._next = anyio.Event()

    async def emit(self, event: Any) -> None:
        await super().emit(event)
        if event.type is EventType.WORKER_HEARTBEAT:
            self._next.set()

    async def beat(self) -> dict[str, Any]:
        self._next = anyio.Event()
        with anyio.fail_after(10):  # a bound on the test, not a measurement
            await self._next.wait()
        return dict(self.of(EventType.WORKER_HEARTBEAT)[-1].data)


async def test_a_worker_without_rate_limits_reports_none() -> None:
    async def echo(text: str) -> str:
        return text

    beats = Beats()
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    worker = Worker(URL, [echo], namespace=namespace, event_emitter=beats, heartbeat_seconds=0.01)
    async with worker:
        assert "rate_limits" not in await beats.beat()
    assert worker.rate_limit_state() == []


async def test_heartbeat_and_status_line_show_a_spawn_paused_by_a_429() -> None:
    """A task on the worker spawns a child that gets a 429 (Retry-After: 30): the worker's
    limit for spawns halves its rate and pauses the model, and the next child waits. The
    heartbeat and the status line say so while it waits."""
    clock = FakeClock(start=0.0)
    limit = RateLimit(model=MODEL, rpm=6_000, clock=clock, name="gpt-4o")
    spawned = throttled_once("child", MODEL, "30")

    async def parent(value: int, ctx: AgentContext) -> int:
        first = await ctx.run(spawned, TaskSpec(input=1))
        assert first.error is not None
        second = await ctx.run(spawned, TaskSpec(input=2))
        return second.unwrap()

    beats = Beats()
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    worker = Worker(
        URL,
        [parent, spawned],
        namespace=namespace,
        event_emitter=beats,
        heartbeat_seconds=0.01,
        rate_limits=[limit],
    )
    assert worker.rate_limit_state() == [
        {"limit": "gpt-4o", "factor": 1.0, "slowed": {}, "waiting": 0, "paused_until": None}
    ]
    results: list[Any] = []
    async with (
        worker,
        AgentRuntime(transport=BrokerTransport(URL, namespace=namespace)) as runtime,
    ):

        async def call() -> None:
            results.append(await runtime.run(parent, TaskSpec(input=0)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await clock.until_sleeping()  # the second child waits
            data = await beats.beat()
            [state] = data["rate_limits"]
            assert (state["limit"], state["factor"], state["waiting"]) == ("gpt-4o", 0.5, 1)
            # The fake clock stands still: the pause ends 30 s from now, on the wall clock.
            assert state["paused_until"] == pytest.approx(time.time() + 30, abs=5)
            assert state["slowed"] == {MODEL: 0.5}
            # The limit, its lowest factor and the model slowed to it, waiting, paused.
            shown = r"gpt-4o x0\.50 for openai:gpt-4o 1 waiting paused \d+\.\ds"
            line = _console_line("worker.heartbeat", time.time(), data)
            assert re.search(rf"rate_limits={shown}", line)
            status = _LiveReporter()._status(worker).plain
            assert re.search(rf"limits: {shown}", status)
            clock.advance_to(30.0)
    assert results[0].output == 2
    assert worker.rate_limit_state()[0]["waiting"] == 0


async def test_a_workers_own_limits_admit_the_tasks_it_runs() -> None:
    """A ``RateLimitMiddleware`` in the worker's middleware (what ``murmur worker start
    --rate-limit`` makes) admits each attempt on the worker: of two tasks sent at once the
    second waits there one interval; its caller gets the wait in the result and the event,
    and the worker's started event and heartbeats show the limit."""
    clock = FakeClock(start=0.0)
    limit = RateLimit(agent="echo", rpm=61, clock=clock, name="echo-limit")  # 1 s apart

    async def echo(text: str) -> str:
        return text

    beats = Beats()
    caller_events = Recorder()
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    worker = Worker(
        URL,
        [echo],
        namespace=namespace,
        event_emitter=beats,
        heartbeat_seconds=0.01,
        middleware=[RateLimitMiddleware([limit])],
    )
    results: list[Any] = []
    async with (
        worker,
        AgentRuntime(
            transport=BrokerTransport(URL, namespace=namespace), event_emitter=caller_events
        ) as runtime,
    ):
        [started] = beats.of(EventType.WORKER_STARTED)
        assert started.data["rate_limits"] == [
            {"limit": "echo-limit", "factor": 1.0, "slowed": {}, "waiting": 0, "paused_until": None}
        ]

        async def call() -> None:
            results.extend(await runtime.gather(echo, [TaskSpec(input="a"), TaskSpec(input="b")]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await clock.until_sleeping()  # the second task waits on the worker
            [state] = (await beats.beat())["rate_limits"]
            assert (state["limit"], state["waiting"]) == ("echo-limit", 1)
            clock.advance_to(1.0)
    assert [result.output for result in results] == ["a", "b"]
    assert sorted(result.rate_limit_wait for result in results) == [0.0, 1.0]
    [waited] = caller_events.of(EventType.RATE_LIMIT_WAITED)
    assert waited.data["waited"] == 1.0
    assert waited.data["limit"] == "echo-limit"
