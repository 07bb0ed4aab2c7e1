"""The Kafka adapter's own behaviour: how far it commits, what a failed put-back does, what
a closing caller removes. On ``in_memory_kafka()`` (no Kafka server here), or on the
adapter's deliveries directly.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from faststream.kafka import KafkaBroker

from distributed.brokers import on_asyncio
from murmur.distributed import _kafka
from murmur.distributed._adapter import Delivery, load_adapter
from murmur.distributed._kafka import DELIVERIES_HEADER, KafkaAdapter, in_memory_kafka
from murmur.distributed._url import parse_broker_url

pytestmark = pytest.mark.anyio


KAFKA_URL = "kafka://kafka.prod:9092"  # served by in_memory_kafka()
TOPIC = "t-kafka.tasks.shout"


def adapter(url: str = KAFKA_URL) -> KafkaAdapter:
    parsed = parse_broker_url(url)
    made = load_adapter(parsed)(parsed, namespace="t-kafka")
    assert isinstance(made, KafkaAdapter)
    return made


# -- commits -----------------------------------------------------------------------------


@dataclass
class Record:
    offset: int
    topic: str = TOPIC
    partition: int = 0
    value: bytes = b""
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class Consumer:
    commits: list[int] = field(default_factory=list)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets[TopicPartition(TOPIC, 0)])


@dataclass
class Message:
    raw_message: Record
    consumer: Consumer


@pytest.mark.parametrize(
    ("settled", "commits"),
    [
        ((1, 0), [[], [2]]),  # nothing while offset 0 is unsettled, then past both
        ((0, 1), [[1], [1, 2]]),  # up to the last offset + 1 in the end
    ],
)
async def test_commits_follow_offsets_whatever_order_records_arrive_in(
    settled: tuple[int, int], commits: list[list[int]]
) -> None:
    async def scenario() -> list[list[int]]:
        kafka, consumer = adapter(), Consumer()
        # Handed over out of offset order (as in_memory_kafka may), settled in either order.
        taken = {
            offset: _kafka._KafkaDelivery(kafka, Message(Record(offset), consumer))
            for offset in (1, 0)
        }
        after = []
        for offset in settled:
            await taken[offset].ack()
            after.append(list(consumer.commits))
        return after

    assert await on_asyncio(scenario) == commits


# -- put-backs ---------------------------------------------------------------------------


class FailingPutBacks:
    """``KafkaBroker.publish``, failing for copies put back (``nack``) while ``failures``
    is above 0 (each failure counts it down)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, failures: float) -> None:
        self.failures = failures
        original = KafkaBroker.publish

        async def publish(broker: KafkaBroker, *args: Any, **kwargs: Any) -> Any:
            if DELIVERIES_HEADER in (kwargs.get("headers") or {}) and self.failures > 0:
                self.failures -= 1
                raise ConnectionError("injected: the copy could not be published")
            return await original(broker, *args, **kwargs)

        monkeypatch.setattr(KafkaBroker, "publish", publish)


class NackFirst:
    """A worker's handler: puts the task ``b"first"`` back on its first delivery, acks
    everything else (its copy included)."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, int]] = []
        self.nacked = asyncio.Event()
        self.copy_done = asyncio.Event()

    async def take(self, data: bytes, delivery: Delivery) -> None:
        self.seen.append((data, delivery.deliveries))
        if data == b"first" and delivery.deliveries == 1:
            await delivery.nack()
            self.nacked.set()
            return
        await delivery.ack()
        if data == b"first":
            self.copy_done.set()


async def test_a_put_back_that_fails_at_first_is_published_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FailingPutBacks(monkeypatch, failures=2)

    with in_memory_kafka() as cluster:

        async def scenario() -> list[tuple[bytes, int]]:
            worker_side, caller_side, handler = adapter(), adapter(), NackFirst()
            try:
                await worker_side.consume(["shout"], handler.take, prefetch=2, consumer="w")
                await caller_side.publish_task("shout", b"first")
                await caller_side.publish_task("shout", b"second")
                await asyncio.wait_for(handler.copy_done.wait(), 10)
            finally:
                await worker_side.aclose()
                await caller_side.aclose()
            return handler.seen

        seen = await on_asyncio(scenario)
    assert sorted(seen) == [(b"first", 1), (b"first", 2), (b"second", 1)]
    assert cluster.committed == {("t-kafka-workers", TOPIC, 0): 3}  # past all three


async def test_a_put_back_that_keeps_failing_is_tried_again_by_the_next_settle(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_kafka, "RECONNECT_SECONDS", 0.0)  # one try, then left unsent
    failing = FailingPutBacks(monkeypatch, failures=float("inf"))

    with in_memory_kafka() as cluster:

        async def scenario() -> list[int | None]:
            worker_side, caller_side, handler = adapter(), adapter(), NackFirst()
            commits: list[int | None] = []
            key = ("t-kafka-workers", TOPIC, 0)
            try:
                await worker_side.consume(["shout"], handler.take, prefetch=2, consumer="w")
                await caller_side.publish_task("shout", b"first")
                await asyncio.wait_for(handler.nacked.wait(), 10)
                commits.append(cluster.committed.get(key))  # not past the unsent one
                failing.failures = 0  # the broker takes it again
                await caller_side.publish_task("shout", b"second")  # its ack retries
                await asyncio.wait_for(handler.copy_done.wait(), 10)
                commits.append(cluster.committed.get(key))
            finally:
                await worker_side.aclose()
                await caller_side.aclose()
            return commits

        with caplog.at_level(logging.ERROR, logger="murmur.distributed"):
            commits = await on_asyncio(scenario)
    assert commits == [None, 3]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "could not queue a task again" in errors[0]
    assert "nothing past it in that partition is committed" in errors[0]


# -- reply topics ------------------------------------------------------------------------


async def test_a_closing_caller_deletes_its_reply_topic() -> None:
    with in_memory_kafka() as cluster:

        async def scenario() -> tuple[bool, bool]:
            caller_side, worker_side = adapter(), adapter()
            replies: list[bytes] = []
            topic = await caller_side.open_replies("c1", replies.append)
            try:
                await worker_side.publish_reply(topic, b"a reply")
                there = topic in cluster.topics()
            finally:
                await caller_side.aclose()
                await worker_side.aclose()
            return there, topic in cluster.topics()

        assert await on_asyncio(scenario) == (True, False)


async def test_a_reply_topic_that_cannot_be_deleted_is_left_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A real cluster's path: nothing listens on port 1, so the admin client fails.
    async def scenario() -> None:
        await adapter("kafka://127.0.0.1:1")._delete_topic("t-kafka.reply.c1")

    with caplog.at_level(logging.WARNING, logger="murmur.distributed"):
        await on_asyncio(scenario)
    assert any("could not delete the reply topic" in r.getMessage() for r in caplog.records)
