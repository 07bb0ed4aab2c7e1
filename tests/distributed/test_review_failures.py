"""Review: failures at the edges of distributed mode come back as the right error, on
both backends, and never take a worker (or other work) down with them."""

from __future__ import annotations

import uuid

import anyio
import pytest

from murmur import AgentRuntime, RuntimeOptions, TaskSpec
from murmur.distributed._transport import BrokerTransport
from murmur.distributed._worker import Worker
from murmur.errors import BrokerUnavailableError, InvalidValueError

pytestmark = pytest.mark.anyio

URL = "memory://review-failures"


class Opaque:
    """Not JSON: cannot cross the wire."""


async def opaque(text: str) -> object:
    return Opaque()


async def shout(text: str) -> str:
    return text.upper()


async def takes_anything(value: object) -> str:
    return "ran"


def transport(namespace: str) -> BrokerTransport:
    return BrokerTransport(URL, namespace=namespace, reply_grace=5)


async def test_an_output_that_cannot_travel_fails_its_task_not_the_worker() -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    worker = Worker(URL, [opaque, shout], namespace=namespace, heartbeat_seconds=0)
    async with worker, AgentRuntime(transport=transport(namespace)) as runtime:
        with anyio.fail_after(10):
            bad = await runtime.run(opaque, TaskSpec(input="a"))
            good = await runtime.run(shout, TaskSpec(input="b"))
    # Rebuilt on the caller as a RemoteAgentError naming the worker-side error.
    assert "InvalidValueError" in str(bad.error)
    assert "Opaque" in str(bad.error)
    assert good.output == "B"
    assert worker.stats.failed == 1
    assert worker.stats.processed == 1


async def test_an_input_that_cannot_travel_is_a_value_error_not_retried() -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    options = RuntimeOptions(retry_max_attempts=3, retry_initial_delay=0)
    async with AgentRuntime(transport=transport(namespace), options=options) as runtime:
        result = await runtime.run(takes_anything, TaskSpec(input=Opaque()))
    assert type(result.error) is InvalidValueError
    assert "input" in str(result.error)
    assert result.attempts == 1


async def test_an_unreachable_broker_is_a_broker_error_on_the_caller() -> None:
    broker = BrokerTransport("redis://user:s3cret@127.0.0.1:1", connect_timeout=1)
    async with AgentRuntime(transport=broker) as runtime:
        result = await runtime.run(shout, TaskSpec(input="a"))
    assert type(result.error) is BrokerUnavailableError  # not an exception group (Trio)
    assert "s3cret" not in str(result.error)


async def test_an_unreachable_broker_fails_worker_start_and_leaves_nothing() -> None:
    # The suite's fixture fails the test if the Trio worker's helper loop thread survives.
    worker = Worker("amqp://user:s3cret@127.0.0.1:1/", [shout], heartbeat_seconds=0)
    with pytest.raises(BrokerUnavailableError) as caught:  # not an exception group (Trio)
        await worker.start()
    assert "s3cret" not in str(caught.value)
