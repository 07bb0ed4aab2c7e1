"""The retry rules judge a failure from another process as they would the original, and
wait as long as its response asked where it happened (``RemoteAgentError.retry_after``)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pydantic_ai.exceptions import ModelHTTPError

from murmur import (
    AgentResult,
    AgentRuntime,
    EventType,
    InputValidationError,
    RemoteAgentError,
    TaskSpec,
)
from murmur.distributed import BrokerTransport, Worker
from murmur.middleware import RetryMiddleware
from murmur.middleware.retry import _as_predicate, is_retryable
from support import FakeSleep, Recorder, crossed


class QuotaError(ConnectionError):
    """A user's own transient error class."""


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (ConnectionError("reset"), True),
        (TimeoutError("slow"), True),
        (QuotaError("over"), True),
        (ModelHTTPError(429, "m"), True),
        (ModelHTTPError(503, "m"), True),
        (ModelHTTPError(400, "m"), False),
        (ValueError("bug"), False),
        (InputValidationError("agent", [{"loc": ("x",), "msg": "bad"}]), False),
    ],
)
def test_the_default_rule_judges_a_remote_failure_as_the_original(
    error: Exception, retried: bool
) -> None:
    remote = crossed(error)
    assert is_retryable(remote) is is_retryable(error) is retried


def test_a_remote_failure_keeps_its_classes_and_status() -> None:
    remote = crossed(QuotaError("over"))
    assert isinstance(remote, RemoteAgentError)
    assert remote.kinds[:3] == (
        f"{__name__}.QuotaError",
        "builtins.ConnectionError",
        "builtins.OSError",
    )
    assert remote.is_a(ConnectionError)
    assert not remote.is_a(ValueError)
    http = crossed(ModelHTTPError(429, "m"))
    assert isinstance(http, RemoteAgentError)
    assert http.status_code == 429


def test_retry_on_types_match_a_remote_failure_by_its_classes() -> None:
    matches = _as_predicate((ConnectionError,))
    assert matches(crossed(QuotaError("over")))
    assert not matches(crossed(ValueError("bug")))


# -- Retry-After from a worker --------------------------------------------------------------


def on_a_worker(*failures: Exception) -> tuple[Any, list[int]]:
    """An agent run on a worker (through the in-memory broker) that fails with ``failures``
    in turn, then answers; and the attempts that reached it."""
    calls: list[int] = []

    async def remote(text: str) -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return text.upper()

    return remote, calls


async def run_remotely(
    agent: Any, retry: RetryMiddleware, recorder: Recorder | None = None
) -> AgentResult[Any]:
    url = "memory://retry-remote"
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    async with (
        Worker(url, [agent], namespace=namespace, heartbeat_seconds=0),
        AgentRuntime(
            transport=BrokerTransport(url, namespace=namespace),
            middleware=[retry],
            event_emitter=recorder,
        ) as runtime,
    ):
        return await runtime.run(agent, TaskSpec(input="q"))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After-Ms": "1500"}, 1.5),
        ({"Retry-After": "0"}, 1.0),  # asked for no wait: the backoff still applies
    ],
)
async def test_a_workers_retry_after_is_honoured(headers: dict[str, str], expected: float) -> None:
    sleep = FakeSleep()
    retry = RetryMiddleware(3, backoff_factor=2.0, jitter=0.0, sleep=sleep)
    agent, calls = on_a_worker(ModelHTTPError(429, "m", headers=headers))
    result = await run_remotely(agent, retry)
    assert result.output == "Q"
    assert result.attempts == 2
    assert calls == [1, 2]
    assert sleep.delays == [pytest.approx(expected)]


@pytest.mark.anyio
async def test_a_workers_retry_after_outranks_the_backoff_up_to_the_cap() -> None:
    sleep = FakeSleep()
    retry = RetryMiddleware(2, backoff_factor=2.0, max_delay=30.0, sleep=sleep)
    agent, _ = on_a_worker(ModelHTTPError(503, "m", headers={"Retry-After": "30"}))
    assert (await run_remotely(agent, retry)).is_ok()
    assert sleep.delays == [30.0]


@pytest.mark.anyio
async def test_a_workers_retry_after_beyond_max_delay_fails_at_once() -> None:
    sleep = FakeSleep()
    recorder = Recorder()
    retry = RetryMiddleware(3, max_delay=60.0, sleep=sleep)
    agent, calls = on_a_worker(ModelHTTPError(429, "m", headers={"Retry-After": "86400"}))
    result = await run_remotely(agent, retry, recorder)
    assert isinstance(result.error, RemoteAgentError)
    assert result.error.retry_after == 86400.0
    assert result.attempts == 1
    assert calls == [1]
    assert sleep.delays == []
    assert recorder.of(EventType.RETRY_SCHEDULED) == []
    assert any(
        "asked to wait 86400 s (Retry-After), more than retry_max_delay=60 s" in note
        for note in result.error.__notes__
    )


@pytest.mark.anyio
async def test_with_no_cap_a_workers_retry_after_is_waited_for() -> None:
    sleep = FakeSleep()
    retry = RetryMiddleware(2, max_delay=None, jitter=0.0, sleep=sleep)
    agent, _ = on_a_worker(ModelHTTPError(429, "m", headers={"Retry-After": "86400"}))
    assert (await run_remotely(agent, retry)).is_ok()
    assert sleep.delays == [86400.0]


def test_the_delay_reads_a_remote_failures_retry_after() -> None:
    retry = RetryMiddleware(3, backoff_factor=2.0, jitter=0.0)
    remote = crossed(ModelHTTPError(429, "m", headers={"Retry-After": "12"}))
    assert isinstance(remote, RemoteAgentError)
    assert remote.retry_after == 12.0
    assert retry.delay_after(1, remote) == 12.0
    assert retry.delay_after(1, crossed(ModelHTTPError(429, "m"))) == 1.0  # it did not say
    assert retry.delay_after(1, RemoteAgentError("X", "m", retry_after=float("inf"))) == 1.0
