"""In-process rate limits: pacing, bursts, tokens, FIFO, several limits, cancellation,
429 feedback, events and the wait in results, all on a fake clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from pydantic_ai.exceptions import ModelHTTPError
from tests.support import FakeClock, Recorder

from murmur import (
    AgentContext,
    AgentRuntime,
    EventType,
    FunctionAgent,
    RateLimit,
    RateLimitError,
    RuntimeOptions,
    TaskSpec,
)
from murmur.errors import InvalidValueError
from murmur.middleware.rate_limit import throttle_seconds

pytestmark = pytest.mark.anyio


def recording_agent(
    clock: FakeClock,
    starts: list[float],
    *,
    name: str = "caller",
    model: str | None = None,
    usage: tuple[int, int, int] | None = None,
    fail: Callable[[int], BaseException | None] | None = None,
) -> FunctionAgent:
    """A function agent that notes when it starts (on the fake clock) and reports usage."""

    async def call(value: Any, ctx: AgentContext) -> Any:
        starts.append(clock.now())
        if usage is not None:
            ctx.report_usage(input_tokens=usage[0], output_tokens=usage[1], requests=usage[2])
        error = fail(len(starts)) if fail is not None else None
        if error is not None:
            raise error
        await anyio.lowlevel.checkpoint()
        return value

    return FunctionAgent(call, name=name, model=model)


async def gather_on(
    clock: FakeClock, runtime: AgentRuntime, agent: Any, tasks: list[TaskSpec], **kw: Any
) -> list[Any]:
    out: list[Any] = []

    async def run() -> None:
        out.extend(await runtime.gather(agent, tasks, **kw))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await clock.run_until_idle(lambda: bool(out))
    return out


def in_window(starts: list[float], width: float) -> int:
    """The most starts in any half-open window [t, t + width)."""
    ordered = sorted(starts)
    best = 0
    j = 0
    for i, t in enumerate(ordered):
        while j < len(ordered) and ordered[j] < t + width:
            j += 1
        best = max(best, j - i)
    return best


async def test_requests_are_paced_evenly_and_the_wait_is_in_results_and_events() -> None:
    # rpm=61 paces at rpm - 1 = 60 a minute (one of slack for jitter): one a second.
    clock = FakeClock()
    starts: list[float] = []
    recorder = Recorder()
    limit = RateLimit(agent="caller", rpm=61, clock=clock)
    async with AgentRuntime(
        options=RuntimeOptions(rate_limits=[limit]), event_emitter=recorder
    ) as runtime:
        results = await gather_on(
            clock, runtime, recording_agent(clock, starts), [TaskSpec(input=i) for i in range(5)]
        )
    t0 = 1000.0
    assert starts == [t0, t0 + 1, t0 + 2, t0 + 3, t0 + 4]
    assert [r.rate_limit_wait for r in results] == [0.0, 1.0, 2.0, 3.0, 4.0]
    waited = recorder.of(EventType.RATE_LIMIT_WAITED)
    assert [e.data["waited"] for e in waited] == [1.0, 2.0, 3.0, 4.0]
    assert {e.data["limit"] for e in waited} == {limit.name}
    assert all(e.task_id is not None for e in waited)


async def test_a_burst_then_the_reduced_rate_never_exceeds_rpm_in_any_period() -> None:
    clock = FakeClock()
    starts: list[float] = []
    limit = RateLimit(agent="caller", rpm=10, burst=4, clock=clock)
    async with AgentRuntime(options=RuntimeOptions(rate_limits=[limit])) as runtime:
        await gather_on(
            clock, runtime, recording_agent(clock, starts), [TaskSpec(input=i) for i in range(40)]
        )
    assert starts[:4] == [1000.0] * 4  # the burst
    assert in_window(starts, 60.0) == 9  # never more than rpm - 1 in a period
    # Sustained: rpm - burst = 6 per minute, one every 10 s.
    assert starts[4] == 1010.0
    assert in_window(starts, 1.0) == 4  # the documented burst: burst - 1 + ceil(6/60)


async def test_tokens_are_estimated_then_corrected_from_usage() -> None:
    clock = FakeClock(start=0.0)
    starts: list[float] = []
    # 100 tokens a minute: a token is 0.6 s. The input (40 chars) is estimated at 10 tokens;
    # each call reports 50, so 40 more are charged after it.
    limit = RateLimit(agent="caller", tpm=100, clock=clock)
    agent = recording_agent(clock, starts, usage=(20, 30, 1))
    async with AgentRuntime(options=RuntimeOptions(rate_limits=[limit])) as runtime:
        for _ in range(3):
            await gather_on(clock, runtime, agent, [TaskSpec(input="x" * 40)])
    # 1st at 0 (bucket: 50 of 100 used); 2nd at 0 (100 used); the 3rd's 10 fit 6 s later.
    assert starts == [0.0, 0.0, pytest.approx(6.0)]


async def test_a_call_larger_than_the_tpm_fails_at_once() -> None:
    clock = FakeClock()
    starts: list[float] = []
    limit = RateLimit(agent="caller", tpm=10, clock=clock)
    async with AgentRuntime(
        options=RuntimeOptions(rate_limits=[limit], retry_max_attempts=3)
    ) as runtime:
        result = await runtime.run(recording_agent(clock, starts), TaskSpec(input="x" * 100))
    assert isinstance(result.error, RateLimitError)
    assert "tpm=10" in str(result.error)
    assert result.attempts == 0  # never sent, never retried
    assert starts == []


async def test_a_custom_estimator_is_used() -> None:
    clock = FakeClock()
    limit = RateLimit(agent="caller", tpm=1000, clock=clock)
    options = RuntimeOptions(rate_limits=[limit], token_estimator=lambda task: 5000)
    async with AgentRuntime(options=options) as runtime:
        result = await runtime.run(recording_agent(clock, []), TaskSpec(input="hi"))
    assert isinstance(result.error, RateLimitError)


async def test_several_limits_apply_and_the_call_waits_for_the_latest() -> None:
    clock = FakeClock(start=0.0)
    starts: list[float] = []
    per_model = RateLimit(model="openai:gpt-4o", rpm=61, clock=clock)  # one a second
    per_provider = RateLimit(provider="openai", rpm=31, clock=clock)  # one every 2 s
    elsewhere = RateLimit(provider="anthropic", rpm=1, clock=clock)  # does not apply
    by_name = RateLimit(model="gpt-4o", rpm=601, clock=clock)  # a bare name matches too
    options = RuntimeOptions(rate_limits=[per_model, per_provider, elsewhere, by_name])
    recorder = Recorder()
    agent = recording_agent(clock, starts, model="openai:gpt-4o")
    async with AgentRuntime(options=options, event_emitter=recorder) as runtime:
        await gather_on(clock, runtime, agent, [TaskSpec(input=i) for i in range(4)])
    assert starts == [0.0, 2.0, 4.0, 6.0]
    waited = recorder.of(EventType.RATE_LIMIT_WAITED)
    assert {e.data["limit"] for e in waited} == {per_provider.name}
    assert set(waited[0].data["limits"]) == {per_model.name, per_provider.name, by_name.name}
    assert waited[0].data["model"] == "openai:gpt-4o"


async def test_waiting_calls_are_served_first_come_first_served() -> None:
    clock = FakeClock(start=0.0)
    limit = RateLimit(provider="openai", rpm=61, clock=clock)
    order: list[str] = []

    def agent(name: str) -> FunctionAgent:
        async def call(value: Any) -> Any:
            order.append(f"{name}{value}")
            return value

        return FunctionAgent(call, name=name, model="openai:gpt-4o-mini")

    done: list[int] = []
    async with AgentRuntime(options=RuntimeOptions(rate_limits=[limit])) as runtime:

        async def batch(name: str) -> None:
            await runtime.gather(agent(name), [TaskSpec(input=i) for i in range(3)])
            done.append(1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(batch, "a")
            await anyio.wait_all_tasks_blocked()  # a's three hold the first three places
            tg.start_soon(batch, "b")
            await clock.run_until_idle(lambda: len(done) == 2)
    assert order == ["a0", "a1", "a2", "b0", "b1", "b2"]


async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    clock = FakeClock(start=0.0)
    starts: list[float] = []
    limit = RateLimit(agent="caller", rpm=61, clock=clock)
    agent = recording_agent(clock, starts)
    async with AgentRuntime(options=RuntimeOptions(rate_limits=[limit])) as runtime:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(runtime.gather, agent, [TaskSpec(input=i) for i in range(50)])
                await anyio.wait_all_tasks_blocked()
                assert clock.sleeping == 49
                scope.cancel()
        assert starts == [0.0]
        # The 49 places (the next 49 s) were given back: the next call waits 1 s, not 50.
        clock.advance_to(0.5)
        await gather_on(clock, runtime, agent, [TaskSpec(input="next")])
    assert starts == [0.0, 1.0]


async def test_a_429_pauses_the_model_and_halves_then_restores_the_rate() -> None:
    clock = FakeClock(start=0.0)
    starts: list[float] = []
    limit = RateLimit(provider="openai", rpm=61, clock=clock)

    def fail(n: int) -> BaseException | None:
        if n == 2:
            return ModelHTTPError(429, "gpt-4o", headers={"retry-after": "10"})
        return None

    agent = recording_agent(clock, starts, model="openai:gpt-4o", fail=fail)
    async with AgentRuntime(options=RuntimeOptions(rate_limits=[limit])) as runtime:
        results = await gather_on(clock, runtime, agent, [TaskSpec(input=i) for i in range(5)])
    assert [r.is_ok() for r in results] == [True, False, True, True, True]
    # 0, 1 (the 429: paused until 11), then the rate is halved: one every 2 s from 11,
    # growing back by half the configured rate per period.
    assert starts[:3] == [0.0, 1.0, 11.0]
    assert starts[3] == pytest.approx(13.0, abs=0.01)
    assert limit.scale(round(11e6 + 120e6), "openai:gpt-4o") == 1.0  # recovered two periods on
    assert not limit._slowed  # and forgotten


async def test_state_shows_the_factor_the_waiting_calls_and_the_pause() -> None:
    """What a worker's heartbeat shows of a limit: after a 429 with Retry-After 10, half
    the configured rates and the model paused 10 s; calls waiting for it, counted while
    they wait."""
    clock = FakeClock(start=0.0)
    starts: list[float] = []
    limit = RateLimit(provider="openai", rpm=61, clock=clock, name="openai")
    assert limit.state() == {
        "limit": "openai",
        "factor": 1.0,
        "slowed": {},
        "waiting": 0,
        "paused_until": None,
    }

    def fail(n: int) -> BaseException | None:
        return ModelHTTPError(429, "gpt-4o", headers={"retry-after": "10"}) if n == 1 else None

    agent = recording_agent(clock, starts, model="openai:gpt-4o", fail=fail)
    async with AgentRuntime(options=RuntimeOptions(rate_limits=[limit])) as runtime:
        await gather_on(clock, runtime, agent, [TaskSpec(input=0)])
        state = limit.state()
        assert (state["factor"], state["waiting"]) == (0.5, 0)
        assert state["slowed"] == {"openai:gpt-4o": 0.5}  # the model that got the 429
        # The fake clock stands still: the pause ends 10 s from now, on the wall clock.
        assert state["paused_until"] == pytest.approx(time.time() + 10, abs=1)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(runtime.gather, agent, [TaskSpec(input=i) for i in range(3)])
                await anyio.wait_all_tasks_blocked()
                assert clock.sleeping == 3
                assert limit.state()["waiting"] == 3
                scope.cancel()
    assert limit.state()["waiting"] == 0


async def test_a_429_on_one_model_does_not_slow_another() -> None:
    clock = FakeClock(start=0.0)
    starts_a: list[float] = []
    starts_b: list[float] = []
    limit_a = RateLimit(model="openai:gpt-4o", rpm=601, clock=clock)
    limit_b = RateLimit(model="openai:gpt-4o-mini", rpm=601, clock=clock)

    def storm(n: int) -> BaseException | None:
        return ModelHTTPError(429, "gpt-4o", headers={"retry-after": "30"})

    a = recording_agent(clock, starts_a, name="a", model="openai:gpt-4o", fail=storm)
    b = recording_agent(clock, starts_b, name="b", model="openai:gpt-4o-mini")
    out: list[Any] = []
    async with AgentRuntime(options=RuntimeOptions(rate_limits=[limit_a, limit_b])) as runtime:

        async def batch(agent: Any) -> None:
            out.append(await runtime.gather(agent, [TaskSpec(input=i) for i in range(20)]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(batch, a)
            tg.start_soon(batch, b)
            await clock.run_until_idle(lambda: len(out) == 2)
    # b ran at its own pace (600 a minute: one every 0.1 s), untouched by a's storm.
    assert starts_b == pytest.approx([i / 10 for i in range(20)])
    assert starts_a[0] == 0.0
    assert starts_a[1] == pytest.approx(30.0)


def a_429_first(retry_after: str) -> Callable[[int], BaseException | None]:
    """A ``fail`` for ``recording_agent``: a 429 for its first call, then none."""

    def fail(n: int) -> BaseException | None:
        if n > 1:
            return None
        return ModelHTTPError(429, "gpt-4o", headers={"retry-after": retry_after})

    return fail


async def gather_in_turn(
    clock: FakeClock, runtime: AgentRuntime, *batches: tuple[Any, int]
) -> None:
    """A ``gather`` of ``count`` tasks per (agent, count), each started once the ones
    before it wait: they come in that order."""
    done: list[Any] = []

    async def batch(agent: Any, count: int) -> None:
        done.append(await runtime.gather(agent, [TaskSpec(input=i) for i in range(count)]))

    async with anyio.create_task_group() as tg:
        for agent, count in batches:
            tg.start_soon(batch, agent, count)
            await anyio.wait_all_tasks_blocked()
        await clock.run_until_idle(lambda: len(done) == len(batches))


async def test_a_slowed_model_never_takes_the_limit_past_its_burst() -> None:
    """A 429 slows only its model, by spacing its calls further; when a call may start is
    the configured tolerance for every model. So a burst of another model's calls, then
    a call of the slowed one, stay within the limit's documented burst."""
    clock = FakeClock(start=0.0)
    starts: list[float] = []
    limit = RateLimit(provider="openai", rpm=10, burst=4, clock=clock)  # then one every 10 s
    a = recording_agent(clock, starts, name="a", model="openai:gpt-4o", fail=a_429_first("30"))
    b = recording_agent(clock, starts, name="b", model="openai:gpt-4o-mini")
    async with AgentRuntime(options=RuntimeOptions(rate_limits=[limit])) as runtime:
        await gather_on(clock, runtime, a, [TaskSpec(input=0)])
        # Idle: the burst is available again; gpt-4o's factor has grown back from 0.5 at
        # 30 s (the pause's end) by half the rate per period.
        clock.advance_to(40.0)
        await gather_in_turn(clock, runtime, (b, 4), (a, 2))
    later = starts[1:]
    assert later[:4] == [40.0] * 4  # gpt-4o-mini's burst
    assert later[4] == 50.0  # gpt-4o waits for room in the burst, as any model would
    # Then 1 / factor intervals further: at 50 s the factor is 0.5 + 20 / 120.
    assert later[5] == pytest.approx(50.0 + 10 / (0.5 + 20 / 120), abs=0.01)
    assert in_window(later, 1.0) == 4  # burst - 1 + ceil(1 * 6 / 60)
    assert list(limit.state()["slowed"]) == ["openai:gpt-4o"]


async def test_a_slowed_model_shares_the_limit_without_exceeding_it() -> None:
    """gpt-4o slowed by its 429 and gpt-4o-mini running together under a provider's
    limit: no period holds more than the limit's rpm - 1 calls, whatever the mix."""
    clock = FakeClock(start=0.0)
    starts_a: list[float] = []
    starts_b: list[float] = []
    limit = RateLimit(provider="openai", rpm=61, clock=clock)  # one a second
    a = recording_agent(clock, starts_a, name="a", model="openai:gpt-4o", fail=a_429_first("5"))
    b = recording_agent(clock, starts_b, name="b", model="openai:gpt-4o-mini")
    async with AgentRuntime(options=RuntimeOptions(rate_limits=[limit])) as runtime:
        await gather_on(clock, runtime, a, [TaskSpec(input=0)])
        await gather_in_turn(clock, runtime, (a, 20), (b, 20))
    both = starts_a + starts_b
    # At most rpm - 1 = 60 in a period; burst - 1 + ceil(w * 60 / 60) in any w seconds.
    assert in_window(both, 60.0) <= 60
    assert all(in_window(both, w) <= w for w in (1.0, 5.0, 10.0))
    assert min(starts_a[1:]) >= 5.0  # the pause
    # gpt-4o's calls take 1 / factor intervals each while slowed: fewer of them fit.
    assert len([t for t in starts_a if t < 30]) < len([t for t in starts_b if t < 30])


def test_a_limit_keeps_at_most_a_thousand_slowed_models() -> None:
    """Each 429 of a new model slows it under the limit: a limit keeps at most 1,000
    models, forgetting those recovered, else the one whose last 429 is the oldest (its
    calls then run at the configured rate: the limit's total still holds)."""
    limit = RateLimit(provider="p", rpm=61, clock=FakeClock(start=0.0))
    pause = 1_000_000
    limit._throttle(0, pause, "p:recovered")
    for i in range(999):
        limit._throttle(200_000_000, pause, f"p:m{i}")  # the first recovered by then
    limit._throttle(200_000_000, pause, "p:new")
    assert len(limit._slowed) == 1000
    assert "p:recovered" not in limit._slowed
    limit._throttle(200_000_000, pause, "p:m0")  # again: now the latest
    limit._throttle(200_000_000, pause, "p:newer")
    assert len(limit._slowed) == 1000
    assert "p:m1" not in limit._slowed  # the oldest 429
    assert {"p:m0", "p:new", "p:newer"} <= set(limit._slowed)
    assert limit.scale(200_000_000, "p:newer") == 0.5
    assert limit.scale(200_000_000, "p:elsewhere") == 1.0
    assert len(limit.state()["slowed"]) == 8  # the heartbeat lists the slowest few


async def test_extra_requests_of_a_run_are_charged() -> None:
    clock = FakeClock(start=0.0)
    starts: list[float] = []
    limit = RateLimit(agent="caller", rpm=61, clock=clock)
    agent = recording_agent(clock, starts, usage=(1, 1, 3))  # a run of 3 requests
    async with AgentRuntime(options=RuntimeOptions(rate_limits=[limit])) as runtime:
        for _ in range(2):
            await gather_on(clock, runtime, agent, [TaskSpec(input=1)])
    assert starts == [0.0, 3.0]


async def test_a_runtime_without_applicable_limits_does_not_wait() -> None:
    clock = FakeClock(start=0.0)
    starts: list[float] = []
    limit = RateLimit(agent="someone-else", rpm=1, clock=clock)
    async with AgentRuntime(options=RuntimeOptions(rate_limits=[limit])) as runtime:
        await gather_on(
            clock, runtime, recording_agent(clock, starts), [TaskSpec(input=i) for i in range(5)]
        )
    assert starts == [0.0] * 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "rpm=, tpm="),
        ({"rpm": 0}, "rpm must be"),
        ({"rpm": 5, "burst": 6}, "burst=6"),
        ({"tpm": 10, "period": 0}, "period"),
        ({"rpm": 1, "store": "http://x"}, "store"),
        ({"rpm": 1, "on_store_error": "maybe"}, "on_store_error"),
        ({"rpm": 1, "model": ""}, "model"),
    ],
)
def test_invalid_limits_name_the_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidValueError, match=message):
        RateLimit(**kwargs)


def test_limits_of_one_runtime_share_one_clock() -> None:
    with pytest.raises(ValueError, match="clock"):
        RuntimeOptions(
            rate_limits=[RateLimit(rpm=1, clock=FakeClock()), RateLimit(rpm=1, clock=FakeClock())]
        )


def test_429_waits_read_retry_after_and_provider_reset_headers() -> None:
    assert throttle_seconds(ModelHTTPError(500, "m")) is None
    assert throttle_seconds(ModelHTTPError(429, "m", headers={"retry-after": "7"})) == 7.0
    assert throttle_seconds(ModelHTTPError(429, "m")) == 1.0
    openai = ModelHTTPError(429, "m", headers={"x-ratelimit-reset-tokens": "1m30s"})
    assert throttle_seconds(openai) == 90.0

    class SdkError(Exception):
        status_code = 429

        def __init__(self) -> None:
            self.headers = {"Retry-After-Ms": "250"}

    assert throttle_seconds(SdkError()) == 0.25
