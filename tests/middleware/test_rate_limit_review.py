"""Review of the rate limits (issue 16): cases found by trying to break them."""

from __future__ import annotations

import itertools
from typing import Any

import anyio
import pytest
from pydantic_ai.exceptions import ModelHTTPError
from tests.distributed.brokers import require
from tests.distributed.proxy import tcp_proxy
from tests.middleware.fleet import fresh
from tests.middleware.test_rate_limit import gather_on, recording_agent
from tests.support import FakeClock

from murmur import AgentRuntime, FunctionAgent, RateLimit, RuntimeOptions, TaskSpec, TokenBudget
from murmur.cli._rate_limits import parse_rate_limit
from murmur.errors import InvalidValueError
from murmur.events import MultiEventEmitter
from murmur.middleware import RateLimitMiddleware
from murmur.middleware._redis import text
from murmur.middleware.rate_limit import throttle_seconds

pytestmark = pytest.mark.anyio

QUIET = MultiEventEmitter([])


async def test_a_429_storm_on_one_model_does_not_slow_another_under_a_provider_limit() -> None:
    """A provider-wide limit (the issue's ``RateLimit(provider="anthropic", rpm=50)``): a
    429 storm on one of its models pauses that model, not the provider's other models."""
    clock = FakeClock(start=0.0)
    starts_a: list[float] = []
    starts_b: list[float] = []
    limit = RateLimit(provider="openai", rpm=601, clock=clock)  # one every 0.1 s

    def storm(n: int) -> BaseException | None:
        return ModelHTTPError(429, "gpt-4o", headers={"retry-after": "30"})

    a = recording_agent(clock, starts_a, name="a", model="openai:gpt-4o", fail=storm)
    b = recording_agent(clock, starts_b, name="b", model="openai:gpt-4o-mini")
    out: list[Any] = []
    options = RuntimeOptions(rate_limits=[limit], retry_max_attempts=1)
    async with AgentRuntime(options=options) as runtime:

        async def batch(agent: Any) -> None:
            out.append(await runtime.gather(agent, [TaskSpec(input=i) for i in range(20)]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(batch, a)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(batch, b)
            await clock.run_until_idle(lambda: len(out) == 2)
    # b's calls are not held until a's pause ends (30 s): they share the provider's rate
    # with a's queue, at worst 40 calls at 0.1 s.
    assert max(starts_b) < 30.0, starts_b


async def test_a_429_of_one_model_does_not_halve_another_model_s_rate() -> None:
    """A 429 of gpt-4o (OpenAI limits each model on its own) halves the provider-wide
    limit's rate for every model of the provider: gpt-4o-mini, which got no 429, then runs
    at half the configured rate, which the issue rules out ("a 429 storm on one model does
    not slow another model's calls"). A design question: the AIMD scale is per limit, not
    per (limit, model)."""
    clock = FakeClock(start=0.0)
    starts_b: list[float] = []
    limit = RateLimit(provider="openai", rpm=601, clock=clock)  # one every 0.1 s

    def once(n: int) -> BaseException | None:
        return ModelHTTPError(429, "gpt-4o", headers={"retry-after": "1"})

    a = recording_agent(clock, [], name="a", model="openai:gpt-4o", fail=once)
    b = recording_agent(clock, starts_b, name="b", model="openai:gpt-4o-mini")
    options = RuntimeOptions(rate_limits=[limit], retry_max_attempts=1)
    async with AgentRuntime(options=options) as runtime:
        await gather_on(clock, runtime, a, [TaskSpec(input=0)])
        await gather_on(clock, runtime, b, [TaskSpec(input=i) for i in range(10)])
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts_b)]
    assert max(gaps) == pytest.approx(0.1), gaps


# -- through Redis ------------------------------------------------------------------------


async def refused_for_30_s(value: Any) -> Any:
    raise ModelHTTPError(429, "gpt-4o", headers={"retry-after": "30"})


async def echo(value: Any) -> Any:
    return value


async def test_a_waiter_of_another_model_is_not_held_by_a_paused_model_fleet_wide(
    names: list[str],
) -> None:
    """The same through Redis: a call of gpt-4o waiting out its model's 30 s pause must not
    hold gpt-4o-mini's calls under the provider's shared limit until the pause ends."""
    name = fresh(names, "provider")
    a = FunctionAgent(refused_for_30_s, name="a", model="openai:gpt-4o")
    b = FunctionAgent(echo, name="b", model="openai:gpt-4o-mini")
    limit = RateLimit(provider="openai", rpm=6000, store=require("redis"), name=name)
    options = RuntimeOptions(rate_limits=[limit], retry_max_attempts=1)
    async with AgentRuntime(options=options, event_emitter=QUIET) as runtime:
        assert isinstance((await runtime.run(a, TaskSpec(input=0))).error, ModelHTTPError)
        async with anyio.create_task_group() as tg:
            tg.start_soon(runtime.run, a, TaskSpec(input=1))  # waits out gpt-4o's pause
            with anyio.fail_after(20):  # a bound on the test, not a measurement
                while limit._waiting == 0:
                    await anyio.sleep(0.01)  # polling: the waiter's round trip is on a socket
            try:
                with anyio.fail_after(10):  # a bound on the test: the pause is 30 s
                    result = await runtime.run(b, TaskSpec(input=2))
            finally:
                tg.cancel_scope.cancel()
    assert result.output == 2


async def test_a_429_of_one_model_does_not_halve_another_model_s_rate_fleet_wide(
    names: list[str],
) -> None:
    """The same through Redis: after gpt-4o's 429, each call of gpt-4o-mini takes one
    interval of the provider's shared limit (its configured rate), one of gpt-4o two (its
    rate halved). Read from the request TAT each admission moves in the store: the limit
    allows a burst of 300 at 300 an hour (one every 12 s), so no call waits and every
    admission moves the TAT by exactly what it takes, whatever the time."""
    name = fresh(names, "per-model")
    calls = 0

    async def once(value: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # a 429 asking for a millisecond's pause
            raise ModelHTTPError(429, "gpt-4o", headers={"retry-after-ms": "1"})
        return value

    a = FunctionAgent(once, name="a", model="openai:gpt-4o")
    b = FunctionAgent(echo, name="b", model="openai:gpt-4o-mini")
    limit = RateLimit(
        provider="openai", rpm=600, burst=300, period=3600, store=require("redis"), name=name
    )
    moved: list[tuple[str, int]] = []  # (the model's key, how far its admission moved the TAT)
    options = RuntimeOptions(rate_limits=[limit], retry_max_attempts=1)
    async with AgentRuntime(options=options, event_emitter=QUIET) as runtime:
        [stage] = [s for s in runtime._core.stages if isinstance(s, RateLimitMiddleware)]
        original = stage.stores.redis.run

        async def run(url: str, seconds: float, script: str, keys: list[str], args: Any) -> Any:
            out = await original(url, seconds, script, keys, args)
            if script == "reserve" and int(out[1]) >= 0:  # a place was taken
                old, new = int(text(out[2])), int(text(out[3]))
                moved.append((keys[1].rpartition(":m:")[2], new - old))
            return out

        stage.stores.redis.run = run
        assert isinstance((await runtime.run(a, TaskSpec(input=0))).error, ModelHTTPError)
        results = await runtime.gather(b, [TaskSpec(input=i) for i in range(10)])
        again = await runtime.run(a, TaskSpec(input=1))
    assert [r.output for r in results] == list(range(10))
    assert again.output == 1
    interval = 12_000_000  # µs: 3600 s / (600 - 300)
    # The first admission moved the TAT from the past; each later one by what it takes.
    assert moved[1:11] == [("openai:gpt-4o-mini", interval)] * 10
    model, took = moved[11]
    assert model == "openai:gpt-4o"
    assert took == pytest.approx(2 * interval, rel=1e-3)  # halved (and growing back slowly)
    assert all(r.rate_limit_wait == 0 for r in results)
    assert list(limit.state()["slowed"]) == ["openai:gpt-4o"]


async def test_a_waiter_cancelled_while_the_store_is_down_is_cancelled_not_failed(
    names: list[str],
) -> None:
    """A call waiting for its place is cancelled while the store (failing closed) is down:
    the cancellation goes through (it may not give its place back: that is bounded by the
    period), not a RateLimitStoreError in place of it, and it takes no longer than
    ``store_timeout`` to do so."""
    name = fresh(names, "cancel-down")
    require("redis")
    async with tcp_proxy(6379) as store:
        limit = RateLimit(
            agent="echo", rpm=3, store=store.url("redis"), store_timeout=0.5, name=name
        )
        async with AgentRuntime(
            options=RuntimeOptions(rate_limits=[limit]), event_emitter=QUIET
        ) as runtime:
            escaped: list[BaseException] = []
            with anyio.fail_after(10):  # a bound on the test, not a measurement
                with anyio.CancelScope() as scope:
                    try:
                        async with anyio.create_task_group() as tg:
                            tasks = [TaskSpec(input=i) for i in range(3)]
                            tg.start_soon(runtime.gather, echo, tasks)
                            while limit._waiting < 2:
                                await anyio.sleep(0.01)  # polling: the round trips are on a socket
                            await store.cut()
                            scope.cancel()
                    except BaseException as exc:  # what left the cancelled scope
                        escaped.append(exc)
                        raise
            assert scope.cancelled_caught, escaped


# -- what the constructors take -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # Below a microsecond the limit counts nothing (and a 429 divided by zero).
        ({"rpm": 5, "period": 1e-9}, "period"),
        ({"tpm": 5, "period": 1e-7}, "period"),
        ({"rpm": 5, "period": True}, "period"),
        # "never hang": a store that does not answer must fail within store_timeout.
        ({"rpm": 5, "store_timeout": float("inf")}, "store_timeout"),
    ],
)
def test_values_that_cannot_work_are_refused_naming_the_field(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidValueError, match=message):
        RateLimit(**kwargs)


def test_a_stored_budget_never_waits_forever_for_its_store() -> None:
    with pytest.raises(InvalidValueError, match="store_timeout"):
        TokenBudget(limit=10, store="redis://127.0.0.1:6379", store_timeout=float("inf"))


@pytest.mark.parametrize(
    "spec",
    [
        "model=m,rpm=0,store=redis://:hunter2@127.0.0.1:6379/0",
        "model=m,rpm=5,store=redis//:hunter2@127.0.0.1:6379/0",
        "model=m,rpm=5,bogus=1,store=rediss://user:hunter2@example.com:6380",
    ],
)
def test_a_bad_spec_does_not_print_the_store_s_password(spec: str) -> None:
    """The error of a bad --rate-limit goes to the worker's stderr (and its logs): it names
    the SPEC, but not the password of the store in it."""
    with pytest.raises(InvalidValueError) as caught:
        parse_rate_limit(spec)
    assert "hunter2" not in str(caught.value)
    assert str(caught.value).startswith("--rate-limit ")


def test_a_429_s_retry_after_wins_over_the_provider_s_reset_headers() -> None:
    """An OpenAI SDK 429 carries Retry-After and the x-ratelimit-reset-* headers (when the
    buckets are full again, which can be minutes): the model is paused for the Retry-After
    ("Retry-After, else the reset headers", as the module says and a pydantic-ai error is
    read), not for the longest of them."""

    class SdkError(Exception):
        status_code = 429

        def __init__(self) -> None:
            self.headers = {
                "retry-after": "1",
                "x-ratelimit-reset-requests": "120ms",
                "x-ratelimit-reset-tokens": "6m0s",
            }

    pydantic_ai_error = ModelHTTPError(429, "m", headers=SdkError().headers)
    assert throttle_seconds(pydantic_ai_error) == 1.0
    assert throttle_seconds(SdkError()) == 1.0
