"""A worker's stop: in-flight tasks finish within the grace, and what cannot is left on the
broker, unacknowledged, for another worker to run.

Under Trio an embedded worker runs its agents on its asyncio helper loop, so the agents
here signal the test through thread-safe events.
"""

from __future__ import annotations

import threading
import time
import uuid

import anyio
import pytest

from murmur import AgentRuntime, RuntimeOptions, TaskSpec
from murmur.distributed import BrokerTransport, Worker, parse_broker_url
from murmur.distributed._adapter import DeadLetter
from murmur.distributed._memory import MemoryAdapter
from murmur.distributed._wire import TaskMessage, encode
from murmur.transport import TaskEnvelope

pytestmark = pytest.mark.anyio

URL = "memory://lifecycle"


async def test_a_task_not_finished_within_the_grace_is_run_by_another_worker() -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    started = threading.Event()
    calls = 0

    async def stubborn(text: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:  # the first delivery never finishes by itself
            started.set()
            await anyio.sleep_forever()
        return f"done on call {calls}"

    first = Worker(URL, [stubborn], namespace=namespace, grace_seconds=0, heartbeat_seconds=0)
    second = Worker(URL, [stubborn], namespace=namespace, heartbeat_seconds=0)
    results: list[str] = []
    answered = anyio.Event()
    async with AgentRuntime(
        transport=BrokerTransport(URL, namespace=namespace),
        options=RuntimeOptions(timeout_seconds=60),
    ) as runtime:

        async def call() -> None:
            results.append((await runtime.run(stubborn, TaskSpec(input="x"))).unwrap())
            answered.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            async with anyio.create_task_group() as serving:
                await serving.start(first.serve)
                await anyio.to_thread.run_sync(started.wait)
                first.request_stop()  # grace 0: the running task is cut, not acknowledged
            assert first.stats.returned == 1
            assert first.stats.processed == 0
            async with second:
                await answered.wait()
    assert results == ["done on call 2"]
    assert second.stats.processed == 1


async def test_stop_waits_for_in_flight_tasks_within_the_grace() -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    started, release = threading.Event(), threading.Event()

    async def slow(text: str) -> str:
        started.set()
        await anyio.to_thread.run_sync(release.wait, abandon_on_cancel=True)
        return text.upper()

    worker = Worker(URL, [slow], namespace=namespace, grace_seconds=60, heartbeat_seconds=0)
    results: list[str] = []
    async with AgentRuntime(transport=BrokerTransport(URL, namespace=namespace)) as runtime:

        async def call() -> None:
            results.append((await runtime.run(slow, TaskSpec(input="x"))).unwrap())

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            async with anyio.create_task_group() as serving:
                await serving.start(worker.serve)
                await anyio.to_thread.run_sync(started.wait)
                worker.request_stop()  # no new tasks; the one in flight goes on
                assert worker.stats.in_flight == 1
                release.set()
    assert results == ["X"]
    assert worker.stats.processed == 1
    assert worker.stats.returned == 0


class _UnreachableReplies(MemoryAdapter):
    """Replies to the address ``poisoned`` fail, as a reply to a key of the wrong type does
    on Redis."""

    async def publish_reply(self, address: str, data: bytes) -> None:
        if address.endswith("poisoned"):
            raise ConnectionError("WRONGTYPE Operation against a key holding the wrong kind")
        await super().publish_reply(address, data)


async def test_a_result_that_cannot_be_sent_does_not_stop_the_worker() -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"

    async def echo(text: str) -> str:
        return text

    # Grace 0: the poisoned task's result, tried again while its caller may wait (it has
    # no deadline: until the worker stops), is cut off by the stop.
    worker = Worker(URL, [echo], namespace=namespace, heartbeat_seconds=0, grace_seconds=0)
    worker._adapter_class = _UnreachableReplies
    async with worker:
        poisoned = TaskMessage(
            envelope=TaskEnvelope(agent="echo", task=TaskSpec(input="lost"), trace_id="t"),
            reply_to=f"{namespace}.reply.poisoned",
            correlation_id="c-1",
        )
        await _UnreachableReplies(parse_broker_url(URL), namespace=namespace).publish_task(
            "echo", encode(poisoned)
        )
        async with AgentRuntime(transport=BrokerTransport(URL, namespace=namespace)) as runtime:
            # Tasks are taken in order: once this one is answered, the poisoned one was run.
            result = await runtime.run(echo, TaskSpec(input="after"))
    assert result.output == "after"
    assert worker.stats.processed == 1
    assert worker.stats.failed == 0
    assert worker.stats.returned == 1  # the poisoned one: run, never acknowledged unsent


async def test_a_result_not_sent_before_its_caller_gives_up_is_left_for_redelivery() -> None:
    # Its deadline long past: not run, and its (timeout) result cannot be sent either. Each
    # delivery puts it back rather than acknowledging it, until the delivery limit sets it
    # aside as a dead letter: never acknowledged as if answered.
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    dead_lettered = threading.Event()

    class Observed(_UnreachableReplies):
        async def publish_dead_letter(self, letter: DeadLetter) -> None:
            await super().publish_dead_letter(letter)
            dead_lettered.set()

    async def echo(text: str) -> str:
        raise AssertionError("a task past its deadline never runs")

    worker = Worker(URL, [echo], namespace=namespace, heartbeat_seconds=0, max_deliveries=2)
    worker._adapter_class = Observed
    adapter = Observed(parse_broker_url(URL), namespace=namespace)
    expired = TaskMessage(
        envelope=TaskEnvelope(
            agent="echo", task=TaskSpec(input="late"), trace_id="t", deadline=time.time() - 60
        ),
        reply_to=f"{namespace}.reply.poisoned",
        correlation_id="c-2",
    )
    async with worker:
        await adapter.publish_task("echo", encode(expired))
        with anyio.fail_after(20):
            await anyio.to_thread.run_sync(dead_lettered.wait, abandon_on_cancel=True)
    (letter,) = await adapter.dead_letters(10)
    assert letter.reason == "delivery-limit"
    assert (worker.stats.returned, worker.stats.rejected, worker.stats.processed) == (2, 1, 0)


async def test_a_message_nested_too_deep_to_parse_is_dead_lettered_and_the_worker_goes_on() -> None:
    # Past pydantic's depth limit it is malformed; Python's json then raises RecursionError
    # (not a ValueError) where the worker reads who to tell: that must not end the worker.
    namespace = f"t-{uuid.uuid4().hex[:8]}"

    async def echo(text: str) -> str:
        return text

    worker = Worker(URL, [echo], namespace=namespace, heartbeat_seconds=0)
    adapter = MemoryAdapter(parse_broker_url(URL), namespace=namespace)
    async with worker:
        await adapter.publish_task("echo", b"[" * 5000)
        async with AgentRuntime(transport=BrokerTransport(URL, namespace=namespace)) as runtime:
            result = await runtime.run(echo, TaskSpec(input="after"))
        letters = await adapter.dead_letters(10)
    assert result.output == "after"
    assert [letter.reason for letter in letters] == ["malformed"]
    assert worker.stats.rejected == 1
