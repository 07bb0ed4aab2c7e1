"""The NATS, RabbitMQ and Kafka adapters, each through a runtime and in-process workers.

NATS (JetStream) and RabbitMQ run against the local servers (a failure when one is
not reachable); Kafka against ``in_memory_kafka()`` (FastStream's test broker, shared by
every adapter of the process). Each test uses its own namespace and removes what it made.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from distributed.brokers import cleanup, on_asyncio, require
from murmur import AgentRuntime, TaskSpec
from murmur.distributed._adapter import BrokerAdapter, Delivery, load_adapter
from murmur.distributed._kafka import InMemoryKafka, in_memory_kafka
from murmur.distributed._transport import BrokerTransport
from murmur.distributed._url import parse_broker_url
from murmur.distributed._worker import Worker

pytestmark = pytest.mark.anyio

KAFKA_URL = "kafka://kafka.prod:9092"  # the product page's; served by in_memory_kafka()


async def shout(text: str) -> str:
    return text.upper()


@dataclass
class Broker:
    kind: str
    url: str
    namespace: str = field(default_factory=lambda: f"t-{uuid.uuid4().hex[:10]}")
    cluster: InMemoryKafka | None = None

    def transport(self) -> BrokerTransport:
        return BrokerTransport(self.url, namespace=self.namespace)

    def worker(self, **kwargs: Any) -> Worker:
        return Worker(self.url, [shout], heartbeat_seconds=0, namespace=self.namespace, **kwargs)

    def adapter(self) -> BrokerAdapter:
        url = parse_broker_url(self.url)
        return load_adapter(url)(url, namespace=self.namespace)


@pytest.fixture(params=["nats", "rabbit", "kafka"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    kind = request.param
    if kind == "kafka":
        with in_memory_kafka() as cluster:
            yield Broker(kind, KAFKA_URL, cluster=cluster)
        return
    spec = Broker(kind, require(kind))  # never skipped: a missing server fails the test
    try:
        yield spec
    finally:
        cleanup(kind, spec.namespace, ["shout"])


# -- round trips -----------------------------------------------------------------------


async def test_run_and_gather_through_a_worker(broker: Broker) -> None:
    async with (
        broker.worker(concurrency=4) as worker,
        AgentRuntime(transport=broker.transport()) as runtime,
    ):
        with anyio.fail_after(20):
            one = await runtime.run(shout, TaskSpec(input="hello"))
            many = await runtime.gather(
                shout, [TaskSpec(input=f"x{i}") for i in range(50)], max_concurrency=10
            )
    assert one.error is None
    assert one.output == "HELLO"
    assert [r.output for r in many] == [f"X{i}" for i in range(50)]
    assert worker.stats.processed == 51
    if broker.cluster is not None:
        # Kafka: every offset committed, and only by the worker group (after each result).
        topic = f"{broker.namespace}.tasks.shout"
        assert broker.cluster.committed == {(f"{broker.namespace}-workers", topic, 0): 51}


async def test_a_task_published_before_any_worker_is_served(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = threading.Event()  # set on the caller's broker loop (a helper under Trio)
    adapter_class = type(broker.adapter())
    original = adapter_class.publish_task

    async def publish_and_tell(self: BrokerAdapter, agent: str, data: bytes) -> None:
        await original(self, agent, data)
        published.set()

    monkeypatch.setattr(adapter_class, "publish_task", publish_and_tell)
    results: list[Any] = []
    served = anyio.Event()
    async with AgentRuntime(transport=broker.transport()) as runtime:

        async def call() -> None:
            results.append(await runtime.run(shout, TaskSpec(input="early")))
            served.set()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(call)
                # Stored by the broker (JetStream ack, publisher confirm) before any worker.
                assert await anyio.to_thread.run_sync(published.wait, 10)
                async with broker.worker(concurrency=1) as worker:
                    await served.wait()
    assert results[0].output == "EARLY"
    assert worker.stats.processed == 1


async def test_two_workers_share_the_tasks_each_served_once(broker: Broker) -> None:
    async with (
        broker.worker(concurrency=2, name="w1") as first,
        broker.worker(concurrency=2, name="w2") as second,
        AgentRuntime(transport=broker.transport()) as runtime,
    ):
        with anyio.fail_after(20):
            results = await runtime.gather(
                shout, [TaskSpec(input=f"t{i}") for i in range(40)], max_concurrency=8
            )
    assert [r.output for r in results] == [f"T{i}" for i in range(40)]
    counts = (first.stats.processed, second.stats.processed)
    assert sum(counts) == 40, counts  # none served twice
    assert min(counts) > 0, counts  # both took some


# -- the adapter's own contract ----------------------------------------------------------


async def test_a_nacked_task_is_delivered_again(broker: Broker) -> None:
    async def scenario() -> list[bytes]:
        seen: list[bytes] = []
        again = asyncio.Event()
        worker_side, caller_side = broker.adapter(), broker.adapter()

        async def take(data: bytes, delivery: Delivery) -> None:
            seen.append(data)
            if len(seen) == 1:
                await delivery.nack()
            else:
                await delivery.ack()
                again.set()

        await worker_side.connect()
        await caller_side.connect()
        try:
            await worker_side.consume(["shout"], take, prefetch=1, consumer="w")
            await caller_side.publish_task("shout", b"payload")
            await asyncio.wait_for(again.wait(), 10)
        finally:
            await worker_side.aclose()
            await caller_side.aclose()
        return seen

    assert await on_asyncio(scenario) == [b"payload", b"payload"]


async def test_kafka_consumers_commit_by_hand_from_the_earliest_record() -> None:
    with in_memory_kafka() as cluster:
        url = parse_broker_url(KAFKA_URL)

        async def scenario() -> dict[str, Any]:
            adapter = load_adapter(url)(url, namespace="t-options")

            async def take(data: bytes, delivery: Delivery) -> None:
                await delivery.ack()

            try:
                await adapter.consume(["shout"], take, prefetch=3, consumer="w")
                (subscriber,) = adapter._subscribers  # type: ignore[attr-defined]
                options: dict[str, Any] = subscriber.consumer.options
                return {"group": subscriber.consumer.group, **options}
            finally:
                await adapter.aclose()

        options = await on_asyncio(scenario)
    assert cluster.committed == {}
    assert options["group"] == "t-options-workers"
    assert options["enable_auto_commit"] is False
    assert options["auto_offset_reset"] == "earliest"
    assert options["max_poll_records"] == 3
