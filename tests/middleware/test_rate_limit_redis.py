"""Fleet-wide rate limits through Redis: one state shared by runtimes and processes, 429s
that pause only their model, and an unreachable store failing closed or open, never
hanging. Real Redis on 127.0.0.1:6379; every test uses its own limit names and deletes
their keys."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from pydantic_ai.exceptions import ModelHTTPError
from tests.distributed.brokers import require
from tests.middleware import fleet
from tests.middleware.fleet import fresh
from tests.support import Recorder

from murmur import (
    AgentContext,
    AgentRuntime,
    EventType,
    FunctionAgent,
    RateLimit,
    RateLimitStoreError,
    RuntimeOptions,
    TaskSpec,
)
from murmur.events import MultiEventEmitter
from murmur.middleware import RateLimitMiddleware

pytestmark = pytest.mark.anyio

APP = Path(__file__).with_name("ratelimit_fleet_app.py")
QUIET = MultiEventEmitter([])


def most_in_window(times: list[float], width: float) -> int:
    ordered = sorted(times)
    best = j = 0
    for i, t in enumerate(ordered):
        while j < len(ordered) and ordered[j] < t + width:
            j += 1
        best = max(best, j - i)
    return best


async def test_runtimes_share_one_stored_limit(names: list[str]) -> None:
    name = fresh(names, "shared")
    seen: list[float] = []

    async def call(value: Any) -> Any:
        seen.append(time.monotonic())
        return value

    agent = FunctionAgent(call, name="shared", model="openai:gpt-4o")
    recorder = Recorder()

    def runtime() -> AgentRuntime:
        # Separate instances: their only shared state is in Redis.
        limit = RateLimit(provider="openai", rpm=11, period=1.0, store=require("redis"), name=name)
        return AgentRuntime(options=RuntimeOptions(rate_limits=[limit]), event_emitter=recorder)

    results: list[Any] = []
    async with runtime() as one, runtime() as two:

        async def batch(rt: AgentRuntime) -> None:
            results.extend(await rt.gather(agent, [TaskSpec(input=i) for i in range(8)]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(batch, one)
            tg.start_soon(batch, two)
    assert all(r.is_ok() for r in results)
    # 16 calls at 10 a second (rpm - 1): never more than rpm in any period, in all.
    assert most_in_window(seen, 1.0) <= 11
    assert sum(r.rate_limit_wait > 0 for r in results) >= 10
    waited = recorder.of(EventType.RATE_LIMIT_WAITED)
    assert waited
    assert {e.data["limit"] for e in waited} == {name}


async def test_a_429_storm_pauses_only_its_model_fleet_wide(names: list[str]) -> None:
    url = require("redis")
    stormy = fresh(names, "stormy")
    calm = fresh(names, "calm")

    async def storm(value: Any) -> Any:
        raise ModelHTTPError(429, "gpt-4o", headers={"retry-after": "30"})

    async def fine(value: Any) -> Any:
        return value

    a = FunctionAgent(storm, name="a", model="openai:gpt-4o")
    b = FunctionAgent(fine, name="b", model="openai:gpt-4o-mini")
    limits = [
        RateLimit(model="openai:gpt-4o", rpm=6000, store=url, name=stormy),
        RateLimit(model="openai:gpt-4o-mini", rpm=6000, store=url, name=calm),
    ]
    recorder = Recorder()
    async with AgentRuntime(
        options=RuntimeOptions(rate_limits=limits), event_emitter=recorder
    ) as runtime:
        first = await runtime.run(a, TaskSpec(input=0))
        assert isinstance(first.error, ModelHTTPError)
        results = await runtime.gather(b, [TaskSpec(input=i) for i in range(20)])
    assert all(r.is_ok() for r in results)
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        stormy_model = client.hgetall(f"murmur:ratelimit:{stormy}:m:openai:gpt-4o")
        stormy_ttl = client.pttl(f"murmur:ratelimit:{stormy}:m:openai:gpt-4o")
        calm_keys = list(client.scan_iter(match=f"murmur:ratelimit:{calm}:m:*"))
    finally:
        client.close()
    # gpt-4o is paused (fleet-wide, in Redis) and its rate halved, in its own key under its
    # limit, which expires once the rate has grown back; gpt-4o-mini is untouched.
    assert "p" in stormy_model
    assert float(stormy_model["sf"]) == 0.5
    assert 0 < stormy_ttl <= (30 + 2 * 60) * 1000
    assert calm_keys == []
    assert {e.data["limit"] for e in recorder.of(EventType.RATE_LIMIT_WAITED)} <= {calm}
    # What a worker's heartbeat would show: gpt-4o's limit slowed and paused, the other not.
    assert limits[0].state()["factor"] == 0.5
    assert limits[0].state()["slowed"] == {"openai:gpt-4o": 0.5}
    assert limits[0].state()["paused_until"] is not None
    assert limits[1].state() == {
        "limit": calm,
        "factor": 1.0,
        "slowed": {},
        "waiting": 0,
        "paused_until": None,
    }


async def test_a_runtime_sends_its_admissions_one_at_a_time(names: list[str]) -> None:
    """A burst of 50 calls: their admissions reach Redis one after the other, each answer
    read as it arrives (a queue of answers would start the first-admitted calls late,
    together with later ones, and bunch them at the provider), one round trip each."""
    name = fresh(names, "serial")

    async def fine(value: Any) -> Any:
        return value

    limit = RateLimit(agent="fine", rpm=60_000, store=require("redis"), name=name)
    in_flight = most = calls = 0
    async with AgentRuntime(options=RuntimeOptions(rate_limits=[limit])) as runtime:
        [stage] = [s for s in runtime._core.stages if isinstance(s, RateLimitMiddleware)]
        original = stage.stores.redis.run

        async def run(*args: Any) -> Any:
            nonlocal in_flight, most, calls
            in_flight, calls = in_flight + 1, calls + 1
            most = max(most, in_flight)
            try:
                return await original(*args)
            finally:
                in_flight -= 1

        stage.stores.redis.run = run
        results = await runtime.gather(fine, [TaskSpec(input=i) for i in range(50)])
    assert [r.output for r in results] == list(range(50))
    assert (most, calls) == (1, 50)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1", "redis://10.255.255.1:6379"])
async def test_an_unreachable_store_fails_closed_in_time(url: str) -> None:
    async def fine(value: Any) -> Any:
        return value

    limit = RateLimit(agent="fine", rpm=10, store=url, store_timeout=0.3, name="unreachable")
    async with AgentRuntime(options=RuntimeOptions(rate_limits=[limit])) as runtime:
        with anyio.fail_after(10):  # a bound on the test, not a measurement
            result = await runtime.run(fine, TaskSpec(input=1))
    assert isinstance(result.error, RateLimitStoreError)
    assert "fail closed" in str(result.error)


async def test_an_unreachable_store_can_fail_open() -> None:
    async def fine(value: Any) -> Any:
        return value

    limit = RateLimit(
        agent="fine", rpm=10, store="redis://127.0.0.1:1", on_store_error="open", name="open"
    )
    async with AgentRuntime(options=RuntimeOptions(rate_limits=[limit])) as runtime:
        results = await runtime.gather(fine, [TaskSpec(input=i) for i in range(3)])
    assert [r.output for r in results] == [0, 1, 2]


def test_three_processes_share_one_rpm_at_the_model(tmp_path: Path, names: list[str]) -> None:
    """3 runtimes in 3 processes (two on asyncio, one on Trio) share one rpm, measured where
    the model receives the requests. The period is scaled down to 6 s (rpm=30 in it: one
    request every ~0.2 s), so that the test takes seconds and covers two periods."""
    name = fresh(names, "fleet")
    rpm, period, tasks = 30, 6.0, 20
    outs = [tmp_path / f"p{i}.txt" for i in range(3)]
    fleet.run(
        APP,
        [
            [name, str(rpm), str(period), str(tasks), backend, str(out)]
            for out, backend in zip(outs, ["asyncio", "trio", "asyncio"], strict=True)
        ],
    )
    seen = [float(line) for out in outs for line in out.read_text().split()]
    assert len(seen) == 3 * tasks
    # rpm in any period; the documented burst in any period/60 ("1 s" at this scale) and
    # in any 1 s: burst - 1 + ceil(w * (rpm - burst) / period), plus one for jitter.
    assert most_in_window(seen, period) <= rpm
    assert most_in_window(seen, period / 60) <= 0 + 1 + 1, sorted(seen)
    assert most_in_window(seen, 1.0) <= 0 + 5 + 1, sorted(seen)


async def test_corrections_whose_round_trip_failed_go_with_the_next_one(names: list[str]) -> None:
    """The usage corrections ride along with the next admission; when its round trip
    fails (here failing open), they are kept for the one after, not lost."""
    name = fresh(names, "pending")

    async def three_requests(value: Any, ctx: AgentContext) -> Any:
        ctx.report_usage(input_tokens=1, output_tokens=1, requests=3)  # 2 beyond the first
        return value

    agent = FunctionAgent(three_requests, name="runs", model="openai:gpt-4o")
    limit = RateLimit(
        agent="runs", rpm=60_000, store=require("redis"), name=name, on_store_error="open"
    )
    sent: list[list[Any]] = []
    down = False
    async with AgentRuntime(
        options=RuntimeOptions(rate_limits=[limit]), event_emitter=QUIET
    ) as runtime:
        [stage] = [s for s in runtime._core.stages if isinstance(s, RateLimitMiddleware)]
        original = stage.stores.redis.run

        async def run(url: str, seconds: float, script: str, keys: list[str], args: Any) -> Any:
            if script == "reserve":
                sent.append(list(args))
            if down:
                raise ConnectionError("the store is down")
            return await original(url, seconds, script, keys, args)

        stage.stores.redis.run = run
        for store_down in (False, True, False):
            down = store_down
            assert (await runtime.run(agent, TaskSpec(input=0))).output == 0
    interval = -(-60_000_000 // 59_999)  # µs a request takes of the limit
    # ARGV: delay, tokens, then rate, burst, tpm, period, extra requests (µs), extra tokens.
    assert [args[6] for args in sent] == [0, 2 * interval, 4 * interval]
