"""A 429 that happens on a worker pauses its model at the caller for as long as the
provider asked: the worker reads ``Retry-After`` (or the provider's reset headers) where
the failure happened and sends the seconds back in the error (``ErrorInfo.retry_after``)."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest
from pydantic_ai.exceptions import ModelHTTPError

from murmur import (
    AgentRuntime,
    ErrorInfo,
    EventType,
    RateLimit,
    RemoteAgentError,
    RuntimeOptions,
    TaskSpec,
)
from murmur.distributed import BrokerTransport, Worker
from murmur.middleware.rate_limit import DEFAULT_PAUSE, throttle_seconds
from support import FakeClock, Recorder, crossed, throttled_once

pytestmark = pytest.mark.anyio

URL = "memory://ratelimit"
MODEL = "openai:gpt-4o"


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"x-ratelimit-reset-requests": "1m30s"}, 90.0),
        ({}, None),
    ],
)
def test_a_429_carries_the_wait_its_response_asked_for(
    headers: dict[str, str], seconds: float | None
) -> None:
    remote = crossed(ModelHTTPError(429, "gpt-4o", headers=headers))
    assert isinstance(remote, RemoteAgentError)
    assert remote.retry_after == seconds
    assert throttle_seconds(remote) == (DEFAULT_PAUSE if seconds is None else seconds)


def test_an_error_from_a_peer_without_the_field_reads_as_no_hint() -> None:
    old = '{"type": "x.E", "message": "m", "kinds": ["x.E"], "status_code": 429}'
    remote = ErrorInfo.model_validate_json(old).to_exception()
    assert isinstance(remote, RemoteAgentError)
    assert remote.retry_after is None
    assert throttle_seconds(remote) == DEFAULT_PAUSE
    assert ErrorInfo.from_exception(ValueError("no status")).retry_after is None


async def test_a_429_on_a_worker_pauses_its_model_for_its_retry_after() -> None:
    """The worker's agent answers the first call with a 429 and Retry-After: 7. The caller's
    limiter (on a fake clock) pauses the model for 7 s, not the 1 s default: the next call
    to it waits exactly that long."""
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    clock = FakeClock(start=100.0)
    agent = throttled_once("storm", MODEL, "7")
    limit = RateLimit(model=MODEL, rpm=6_000, clock=clock)
    recorder = Recorder()
    async with (
        Worker(URL, [agent], namespace=namespace, heartbeat_seconds=0),
        AgentRuntime(
            transport=BrokerTransport(URL, namespace=namespace),
            options=RuntimeOptions(rate_limits=[limit], timeout_seconds=30),
            event_emitter=recorder,
        ) as runtime,
    ):
        first = await runtime.run(agent, TaskSpec(input=1))
        assert isinstance(first.error, RemoteAgentError)
        assert (first.error.status_code, first.error.retry_after) == (429, 7.0)
        results: list[Any] = []

        async def second() -> None:
            results.append(await runtime.run(agent, TaskSpec(input=2)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(second)
            await clock.until_sleeping()
            assert clock.next_deadline() == pytest.approx(107.0)
            clock.advance_to(107.0)
    assert results[0].output == 2
    assert results[0].rate_limit_wait == pytest.approx(7.0)
    waited = recorder.of(EventType.RATE_LIMIT_WAITED)
    assert [e.data["waited"] for e in waited] == [pytest.approx(7.0)]
