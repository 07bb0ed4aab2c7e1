"""A worker sends an attempt's result and acknowledges its task message together.

The two are shielded from the worker's own stop (within ``SETTLE_SECONDS``); a result the
broker does not take is sent again while its caller may wait, and never acknowledged
unsent.

Under Trio an embedded worker runs on an asyncio helper loop, so the adapters here signal
the test through thread-safe events.
"""

from __future__ import annotations

import threading
import uuid

import anyio
import pytest

from murmur import AgentRuntime, TaskSpec
from murmur.distributed import BrokerTransport, Worker
from murmur.distributed import _worker as worker_module
from murmur.distributed._memory import MemoryAdapter, _MemoryDelivery
from murmur.distributed._wire import ResultMessage, decode

pytestmark = pytest.mark.anyio

URL = "memory://settling"
HANG = 20.0


@pytest.fixture
def ns() -> str:
    """A namespace of the test's own."""
    return f"t-{uuid.uuid4().hex[:8]}"


def caller(ns: str) -> AgentRuntime:
    return AgentRuntime(transport=BrokerTransport(URL, namespace=ns, reply_grace=5))


async def echo(text: str) -> str:
    return text


class Settled:
    """Every ``ack`` and ``nack`` of a memory delivery, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        ack, nack = _MemoryDelivery.ack, _MemoryDelivery.nack

        async def recorded_ack(delivery: _MemoryDelivery) -> None:
            self.calls.append("ack")
            await ack(delivery)

        async def recorded_nack(delivery: _MemoryDelivery) -> None:
            self.calls.append("nack")
            await nack(delivery)

        monkeypatch.setattr(_MemoryDelivery, "ack", recorded_ack)
        monkeypatch.setattr(_MemoryDelivery, "nack", recorded_nack)


def is_result(data: bytes) -> bool:
    return isinstance(decode(data), ResultMessage)


async def test_a_result_being_sent_when_the_worker_stops_at_once_is_sent_and_acknowledged(
    monkeypatch: pytest.MonkeyPatch, ns: str
) -> None:
    settled = Settled(monkeypatch)
    sending, release = threading.Event(), threading.Event()

    class SlowReplies(MemoryAdapter):
        async def publish_reply(self, address: str, data: bytes) -> None:
            if is_result(data):
                sending.set()
                await anyio.to_thread.run_sync(release.wait)
            await super().publish_reply(address, data)

    worker = Worker(URL, [echo], namespace=ns, heartbeat_seconds=0)
    worker._adapter_class = SlowReplies
    results: list[str] = []
    with anyio.fail_after(HANG):
        async with caller(ns) as runtime, anyio.create_task_group() as tg:

            async def call() -> None:
                results.append((await runtime.run(echo, TaskSpec(input="x"))).unwrap())

            tg.start_soon(call)
            async with anyio.create_task_group() as serving:
                await serving.start(worker.serve)
                await anyio.to_thread.run_sync(sending.wait)
                worker.stop_now()  # between the run and its acknowledgement
                release.set()
    assert results == ["x"]
    assert settled.calls == ["ack"]
    assert (worker.stats.processed, worker.stats.returned) == (1, 0)


async def test_a_stop_waits_for_a_result_being_sent_only_within_its_bound(
    monkeypatch: pytest.MonkeyPatch, ns: str
) -> None:
    monkeypatch.setattr(worker_module, "SETTLE_SECONDS", 0.1)
    settled = Settled(monkeypatch)
    sending = threading.Event()

    class StuckReplies(MemoryAdapter):
        async def publish_reply(self, address: str, data: bytes) -> None:
            if is_result(data):
                sending.set()
                await anyio.sleep_forever()
            await super().publish_reply(address, data)

    worker = Worker(URL, [echo], namespace=ns, heartbeat_seconds=0)
    worker._adapter_class = StuckReplies
    with anyio.fail_after(HANG):
        async with caller(ns) as runtime, anyio.create_task_group() as tg:
            tg.start_soon(runtime.run, echo, TaskSpec(input="x"))
            async with anyio.create_task_group() as serving:
                await serving.start(worker.serve)
                await anyio.to_thread.run_sync(sending.wait)
                worker.stop_now()
            tg.cancel_scope.cancel()  # the caller would wait for good: no deadline
    # Not sent: never acknowledged, handed back for another worker.
    assert settled.calls == ["nack"]
    assert (worker.stats.processed, worker.stats.returned) == (0, 1)


async def test_a_result_the_broker_does_not_take_is_sent_again_until_it_is(
    monkeypatch: pytest.MonkeyPatch, ns: str
) -> None:
    settled = Settled(monkeypatch)
    refused: list[bytes] = []

    class Flaky(MemoryAdapter):
        async def publish_reply(self, address: str, data: bytes) -> None:
            if is_result(data) and len(refused) < 2:
                refused.append(data)
                raise ConnectionError("broker restarting")
            await super().publish_reply(address, data)

    worker = Worker(URL, [echo], namespace=ns, heartbeat_seconds=0)
    worker._adapter_class = Flaky
    with anyio.fail_after(HANG):
        async with worker, caller(ns) as runtime:
            result = await runtime.run(echo, TaskSpec(input="x"))
    assert result.unwrap() == "x"
    assert len(refused) == 2
    assert settled.calls == ["ack"]
    assert (worker.stats.processed, worker.stats.failed, worker.stats.returned) == (1, 0, 0)
