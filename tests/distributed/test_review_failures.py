"""Review: failures at the edges of distributed mode come back as the right error, on
both backends, and never take a worker (or other work) down with them."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any, ClassVar

import anyio
import pytest

from murmur import AgentContext, AgentRuntime, RuntimeOptions, TaskSpec
from murmur.distributed._memory import MemoryAdapter
from murmur.distributed._transport import BrokerTransport
from murmur.distributed._worker import Worker
from murmur.errors import AgentTimeoutError, BrokerUnavailableError, InvalidValueError
from support import cancel_when_ready

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
        await worker.serve()
    assert "s3cret" not in str(caught.value)


async def test_a_batch_on_an_unreachable_broker_waits_for_one_connection_attempt() -> None:
    # Each task used to try (and wait connect_timeout) in turn: N tasks, N timeouts. The
    # tasks that waited for the failing attempt now share its answer.
    broker = BrokerTransport("redis://127.0.0.1:1", connect_timeout=0.5)
    async with AgentRuntime(transport=broker) as runtime:
        with anyio.fail_after(20 * 0.5 - 1):
            results = await runtime.gather(shout, [TaskSpec(input="a") for _ in range(20)])
    assert {type(r.error) for r in results} == {BrokerUnavailableError}


class _StuckConnecting(MemoryAdapter):
    """Connects forever; remembers being closed."""

    connecting = threading.Event()
    closed: ClassVar[list[object]] = []

    async def connect(self) -> None:
        type(self).connecting.set()
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        type(self).closed.append(self)
        await super().aclose()


async def _until(flag: threading.Event) -> None:
    # Set on another thread under Trio (the helper loop's).
    await anyio.to_thread.run_sync(flag.wait)


async def test_a_caller_cancelled_while_connecting_closes_the_half_open_connection() -> None:
    _StuckConnecting.connecting.clear()
    _StuckConnecting.closed.clear()
    broker = transport(f"t-{uuid.uuid4().hex[:8]}")
    broker._adapter_class = _StuckConnecting
    async with AgentRuntime(transport=broker) as runtime:
        outcome = await cancel_when_ready(
            lambda: runtime.run(shout, TaskSpec(input="a")),
            lambda: _until(_StuckConnecting.connecting),
        )
    assert outcome.propagated
    assert not outcome.returned
    assert len(_StuckConnecting.closed) == 1


async def test_a_worker_cancelled_while_connecting_closes_the_half_open_connection() -> None:
    _StuckConnecting.connecting.clear()
    _StuckConnecting.closed.clear()
    worker = Worker(URL, [shout], heartbeat_seconds=0)
    worker._adapter_class = _StuckConnecting
    outcome = await cancel_when_ready(worker.serve, lambda: _until(_StuckConnecting.connecting))
    assert outcome.propagated
    assert not outcome.returned
    assert len(_StuckConnecting.closed) == 1


async def test_a_worker_left_by_a_cancellation_ends_its_helper_thread() -> None:
    # Trio: the helper loop's thread outlived `async with Worker` (the suite's fixture
    # fails the test if it does).
    with anyio.CancelScope() as scope:
        async with Worker(URL, [shout], namespace=f"t-{uuid.uuid4().hex[:8]}"):
            scope.cancel()
            await anyio.sleep_forever()


async def test_a_runtime_left_by_a_cancellation_closes_its_connection() -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    broker = transport(namespace)
    async with Worker(URL, [shout], namespace=namespace, heartbeat_seconds=0):
        with anyio.CancelScope() as scope:
            async with AgentRuntime(transport=broker) as runtime:
                assert (await runtime.run(shout, TaskSpec(input="a"))).output == "A"
                scope.cancel()
                await anyio.sleep_forever()
    # Its reply address is gone from the hub (Trio: its helper thread too).
    assert broker._reply_to
    assert broker._reply_to not in _hub_of(namespace).replies


def _hub_of(namespace: str) -> Any:
    from murmur.distributed import _memory

    return _memory._hub(f"{URL.partition('://')[2]}|{namespace}")


async def sleeps(text: str) -> str:
    await anyio.sleep_forever()
    return text


async def waits_for_a_sleeping_child(text: str, ctx: AgentContext) -> str:
    result = await ctx.run(sleeps, TaskSpec(input=text))
    return str(result.output)


async def test_a_child_spawned_on_a_worker_ends_with_its_parents_deadline() -> None:
    # The children a worker's task spawned had no deadline: once their parent timed out
    # they held their worker's slots for good, and the next tasks were lost.
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    agents = [waits_for_a_sleeping_child, sleeps]
    worker = Worker(
        URL, agents, concurrency=2, namespace=namespace, heartbeat_seconds=0, grace_seconds=0
    )
    broker = BrokerTransport(URL, namespace=namespace, reply_grace=1)
    options = RuntimeOptions(timeout_seconds=0.3)
    async with worker, AgentRuntime(transport=broker, options=options) as runtime:
        for key in "abc":
            result = await runtime.run(waits_for_a_sleeping_child, TaskSpec(input=key))
            # Run by the worker and cut off there, not lost for want of a free slot.
            assert isinstance(result.error, AgentTimeoutError)
            assert "passed its deadline" in str(result.error)


async def test_an_in_process_runtime_left_by_a_cancellation_ends_its_helper_thread() -> None:
    # Trio: the runtime's own asyncio bridge (started for a pydantic-ai agent) must not
    # outlive `async with AgentRuntime()` left by a cancellation (the suite's fixture
    # fails the test if its thread survives).
    from pydantic_ai.models.test import TestModel

    import murmur

    agent = murmur.Agent(name="model", model=TestModel())
    with anyio.CancelScope() as scope:
        async with AgentRuntime() as runtime:
            await runtime.run(agent, TaskSpec(input="x"))
            scope.cancel()
            await anyio.sleep_forever()
