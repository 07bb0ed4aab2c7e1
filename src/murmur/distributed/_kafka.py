"""``kafka://``: Apache Kafka through FastStream's ``KafkaBroker``.

* Tasks: one topic per agent (``<namespace>.tasks.<agent>``), read by the consumer group
  ``<namespace>-workers``; Kafka spreads a topic's partitions over the group's members,
  so workers share an agent's tasks only if its topic has at least as many partitions as
  there are workers. Topics are not created here: the cluster auto-creates them on first
  use with its defaults (``num.partitions``), or the operator creates them beforehand.
  A group with no committed offset starts at the earliest record, so tasks published
  before any worker started are read.
* Offsets are committed only after results are published (no auto-commit, FastStream's
  ``AckPolicy.MANUAL``), and only up to the oldest record of the partition still being
  worked on: a worker that dies leaves every unfinished task (and possibly some finished
  ones: at-least-once) to the partition's next owner, after the group's session timeout.
* ``nack`` publishes the task again at the end of its topic, then lets its offset be
  committed (Kafka cannot redeliver a single record); the copy carries its count of
  deliveries in the ``murmur-deliveries`` header. A copy that cannot be published is
  tried again for up to ``RECONNECT_SECONDS``, then (logged as an error) at each later
  settling of a task of its partition: until it is published, nothing past it in the
  partition is committed. (A record re-read by a partition's next owner after a worker
  died is not counted: Kafka keeps no count, and a record cannot be changed; so
  ``max_deliveries`` does not stop a task that kills every worker running it.)
* A worker polls for more records only when it hands one over: with every slot busy for
  longer than the consumer's ``max_poll_interval_ms`` (aiokafka's default, 5 minutes),
  the consumer leaves the group and its partitions' unfinished tasks go to another worker.
* Replies: one topic per caller (``<namespace>.reply.<caller>``), read without a group,
  deleted when the caller closes (best effort, ``DELETE_SECONDS``; a worker's late reply
  to it may create it again where the cluster auto-creates topics).
* Dead letters: the topic ``<namespace>.dead``, one record each keyed by the dead
  letter's id; a replay re-queues it and appends a record with that key and an empty value
  (a tombstone: the topic may be log-compacted). Listing reads the topic from its start.
* Control: the topic ``<namespace>.control``, read by every worker without a group, from
  its end (what was sent before a worker listened is not for it).

Tests run this adapter without a Kafka server through :func:`in_memory_kafka`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import threading
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import ConsumerStoppedError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.testing import FakeProducer, build_message

from ..errors import InvalidStateError
from ._adapter import (
    DEFAULT_REPLAY_DEADLINE,
    NO_LOGGER,
    BrokerAdapter,
    ControlHandler,
    DeadLetter,
    ReplyHandler,
    TaskHandler,
    replayable,
)
from ._faststream import MESSAGE, hand_over, raw_body
from ._outage import RECONNECT_SECONDS, backoff

__all__ = ["InMemoryKafka", "KafkaAdapter", "in_memory_kafka"]

_log = logging.getLogger("murmur.distributed")

#: The record header carrying how many times a put-back task was delivered before.
DELIVERIES_HEADER = "murmur-deliveries"
#: Seconds a closing caller spends deleting its reply topic, at most.
DELETE_SECONDS = 10.0


class _Partition:
    """A partition's records taken by this worker, in offset order, and how far its
    offset is committed: only ever past records that are settled."""

    __slots__ = ("committed", "lock", "records")

    def __init__(self) -> None:
        self.records: deque[_KafkaDelivery] = deque()
        self.committed = -1
        self.lock = asyncio.Lock()


class _KafkaDelivery:
    __slots__ = (
        "_adapter",
        "_consumer",
        "_partition",
        "_record",
        "deliveries",
        "settled",
        "unsent",
    )

    def __init__(self, adapter: KafkaAdapter, message: Any) -> None:
        self._adapter = adapter
        self._record = message.raw_message
        #: How many times delivered (see ``Delivery.deliveries``): 1 plus the deliveries
        #: of the copies it was put back as.
        self.deliveries = _delivered_before(self._record) + 1
        self._consumer = message.consumer
        key = (id(self._consumer), self._record.topic, self._record.partition)
        self._partition = adapter._partitions.setdefault(key, _Partition())
        # In offset order, whatever order they were handed over in: a commit must never
        # pass a record still being worked on.
        records, offset = self._partition.records, self._record.offset
        at = len(records)
        while at and records[at - 1]._record.offset > offset:
            at -= 1
        records.insert(at, self)
        self.settled = False
        #: Put back (``nack``) but not published again yet: tried again by the next
        #: settling of a task of its partition.
        self.unsent = False

    @property
    def channel(self) -> str:
        topic: str = self._record.topic
        return topic

    async def ack(self) -> None:
        await self._settle()

    async def nack(self) -> None:
        if self.settled or self.unsent:
            return
        if await self._put_back(RECONNECT_SECONDS):
            await self._settle()

    async def _put_back(self, retry_for: float) -> bool:
        """Publish the task again at the end of its topic, trying again through failures
        for up to ``retry_for`` seconds; False if it could not (then it stays ``unsent``,
        and uncommitted: if this worker stops first, the partition's next owner reads it
        again)."""
        first = not self.unsent
        self.unsent = False  # being tried (not by two at once)
        published = False
        record = self._record
        loop = asyncio.get_running_loop()
        give_up = loop.time() + retry_for
        failures = 0
        try:
            while True:
                try:
                    await self._adapter._broker.publish(
                        record.value,
                        record.topic,
                        headers={DELIVERIES_HEADER: str(self.deliveries)},
                    )
                except Exception:
                    failures += 1
                    if loop.time() >= give_up:
                        if first:
                            _log.error(
                                "could not queue a task again on %s (offset %d of partition "
                                "%d): nothing past it in that partition is committed until "
                                "it is (tried again as the partition's next tasks are settled)",
                                record.topic,
                                record.offset,
                                record.partition,
                                exc_info=True,
                            )
                        return False
                    await asyncio.sleep(backoff(failures))
                else:
                    published = True
                    return True
        finally:
            self.unsent = not published  # also if cancelled midway

    async def _settle(self) -> None:
        if self.settled:
            return
        self.settled = True
        partition = self._partition
        stuck = partition.records[0] if partition.records else None
        if stuck is not None and stuck.unsent and await stuck._put_back(0.0):
            stuck.settled = True
        async with partition.lock:
            upto = None
            while partition.records and partition.records[0].settled:
                upto = partition.records.popleft()._record.offset + 1
            if upto is None or upto <= partition.committed:
                return
            record = self._record
            try:
                await self._consumer.commit({TopicPartition(record.topic, record.partition): upto})
            except Exception:
                # Rebalanced away or stopped: the new owner starts from the last commit.
                _log.warning("could not commit %s offset %d", record.topic, upto, exc_info=True)
                return
            partition.committed = upto


class KafkaAdapter(BrokerAdapter):
    """A topic per agent read by the ``<namespace>-workers`` group, a topic per caller."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cluster = _active
        #: The shared in-memory broker of :func:`in_memory_kafka`, if one is active.
        self._cluster = cluster
        if cluster is not None:
            self._broker = cluster.broker
        else:
            self._broker = KafkaBroker(list(self.url.hosts), logger=NO_LOGGER)
        self._subscribers: list[Any] = []
        self._replies: Any = None
        self._reply_topic = ""
        self._control: Any = None
        self._partitions: dict[tuple[int, str, int], _Partition] = {}

    @property
    def group(self) -> str:
        return f"{self.namespace}-workers"

    async def connect(self) -> None:
        if self._cluster is None:
            await self._broker.start()

    async def aclose(self) -> None:
        try:
            await self._stop(self._subscribers)
            self._subscribers = []
            replies, self._replies = self._replies, None
            if replies is not None:
                await self._stop([replies])
                await self._delete_topic(self._reply_topic)
            control, self._control = self._control, None
            if control is not None:
                await self._stop([control])
        finally:
            if self._cluster is None:
                await self._broker.stop()

    async def _delete_topic(self, topic: str) -> None:
        """Delete ``topic`` from the cluster, best effort: a failure (a cluster refusing
        deletions, unreachable, slow) is logged and the topic left."""
        if self._cluster is not None:
            self._cluster.delete_topic(topic)
            return
        try:
            await asyncio.wait_for(_delete_topic(list(self.url.hosts), topic), DELETE_SECONDS)
        except Exception:
            _log.warning("could not delete the reply topic %s", topic, exc_info=True)

    async def _stop(self, subscribers: list[Any]) -> None:
        for subscriber in subscribers:
            await subscriber.stop()
            if self._cluster is not None:
                self._broker._subscribers.discard(
                    subscriber
                )  # the shared broker keeps no dead ones

    async def publish_task(self, agent: str, data: bytes) -> None:
        await self._broker.publish(data, self.task_channel(agent))

    async def open_replies(self, caller: str, handler: ReplyHandler) -> str:
        topic = self.reply_channel(caller)

        async def on_reply(body: Any) -> None:
            handler(body)

        subscriber = self._broker.subscriber(
            topic, auto_offset_reset="earliest", no_reply=True, decoder=raw_body
        )
        subscriber(on_reply)
        await subscriber.start()
        self._replies = subscriber
        self._reply_topic = topic
        return topic

    async def publish_reply(self, address: str, data: bytes) -> None:
        await self._broker.publish(data, address)

    async def consume(
        self, agents: Sequence[str], handler: TaskHandler, *, prefetch: int, consumer: str
    ) -> None:
        async def on_task(body: Any, message: Any = MESSAGE) -> None:
            await hand_over(handler, body, _KafkaDelivery(self, message))

        for agent in agents:
            subscriber = self._broker.subscriber(
                self.task_channel(agent),
                group_id=self.group,
                auto_offset_reset="earliest",  # a new group reads what waited for it
                ack_policy=AckPolicy.MANUAL,  # no auto-commit: _KafkaDelivery commits
                max_poll_records=prefetch,
                no_reply=True,
                decoder=raw_body,
            )
            subscriber(on_task)
            await subscriber.start()
            self._subscribers.append(subscriber)

    async def stop_consuming(self) -> None:
        # Paused, not stopped: the tasks already taken still have offsets to commit.
        for subscriber in self._subscribers:
            kafka_consumer = subscriber.consumer
            if kafka_consumer is not None:
                kafka_consumer.pause(*kafka_consumer.assignment())

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        key = uuid.uuid4().hex[:16]
        await self._broker.publish(letter.to_json(), self.dead_channel(), key=key.encode())

    async def _stored(self) -> list[DeadLetter]:
        """The dead letters not yet replayed, oldest first."""
        if self._cluster is not None:
            records = self._cluster.records(self.dead_channel())
        else:
            records = await _read_topic(list(self.url.hosts), self.dead_channel())
        letters: dict[str, DeadLetter] = {}
        for record in records:
            key = record.key.decode() if isinstance(record.key, bytes) else str(record.key)
            if record.value:
                letters[key] = DeadLetter.from_json(record.value, key)
            else:
                letters.pop(key, None)  # a tombstone: replayed
        return list(letters.values())

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        return (await self._stored())[::-1][:limit]

    async def replay_dead_letters(
        self, ids: Sequence[str] | None, *, deadline_in: float = DEFAULT_REPLAY_DEADLINE
    ) -> list[DeadLetter]:
        letters = await self._stored()
        if ids is not None:
            wanted = set(ids)
            letters = [letter for letter in letters if letter.id in wanted]
        for letter, first in DeadLetter.first_copies(letters):
            if first:
                await self.publish_task(letter.agent, replayable(letter.data, deadline_in))
            await self._broker.publish(b"", self.dead_channel(), key=letter.id.encode())
        return letters

    async def publish_control(self, data: bytes) -> None:
        await self._broker.publish(data, self.control_channel())

    async def open_control(self, handler: ControlHandler) -> None:
        async def on_control(body: Any) -> None:
            handler(body)

        subscriber = self._broker.subscriber(
            self.control_channel(), auto_offset_reset="latest", no_reply=True, decoder=raw_body
        )
        subscriber(on_control)
        await subscriber.start()
        self._control = subscriber


def _delivered_before(record: Any) -> int:
    for name, value in record.headers or ():
        if name == DELIVERIES_HEADER:
            try:
                return max(int(value), 0)
            except ValueError:
                return 0
    return 0


async def _delete_topic(hosts: list[str], topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=hosts)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


async def _read_topic(hosts: list[str], topic: str) -> list[Any]:
    """Every record of ``topic``, read from its start to its current end, without a group
    (nothing committed)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=hosts, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for p in sorted(await consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(*partitions, timeout_ms=1000)
            for tp_records in batch.values():
                records.extend(tp_records)
        records.sort(key=lambda record: record.timestamp)
        return records
    finally:
        await consumer.stop()


# -- the in-memory test hook -------------------------------------------------------------


class InMemoryKafka:
    """One in-memory Kafka for every ``KafkaAdapter`` created while it is active.

    A ``KafkaBroker`` patched by FastStream's ``TestKafkaBroker`` (no network: publishing
    runs the subscribers' handlers), with what a cluster adds that the test broker lacks:

    * records get increasing offsets per topic, and commits are recorded (``committed``);
    * a topic keeps its records until a consumer group reads it (a group starts at the
      earliest record), so tasks published before any worker started are delivered;
    * within a group each record goes to one member, in turn (as a topic with as many
      partitions as members would spread them); a paused member gets none;
    * each handler runs on its own subscriber's event loop (a Trio caller's broker I/O and
      a worker each have one), the publisher waiting until the handler has returned;
    * a topic can be deleted (``delete_topic``; ``topics`` lists those that exist).

    Unlike a cluster's consumer, a subscriber here may be handed a partition's records
    out of offset order (each is handled in a task of its own).
    """

    def __init__(self) -> None:
        self.broker = KafkaBroker("in-memory:9092", logger=NO_LOGGER)
        self._test = _ClusterTestBroker(self, self.broker)
        self._lock = threading.Lock()
        self._offsets: dict[str, itertools.count[int]] = {}
        self._turn = itertools.count()
        self._backlog: dict[str, list[Any]] = {}
        #: Committed offsets by ``(group, topic, partition)``.
        self.committed: dict[tuple[str, str, int], int] = {}
        #: Every record published, by topic (a cluster keeps its logs; the test broker
        #: does not).
        self._log: dict[str, list[Any]] = {}

    def records(self, topic: str) -> list[Any]:
        """The records of ``topic``, in offset order."""
        with self._lock:
            return list(self._log.get(topic, ()))

    def topics(self) -> set[str]:
        """The topics that have had records and were not deleted since."""
        with self._lock:
            return set(self._log)

    def delete_topic(self, topic: str) -> None:
        """Forget ``topic``: its records, its offsets and what it kept for a group."""
        with self._lock:
            for kept in (self._log, self._offsets, self._backlog):
                kept.pop(topic, None)

    def commit(self, group: str | None, offsets: dict[TopicPartition, int]) -> None:
        with self._lock:
            for tp, offset in offsets.items():
                key = (group or "", tp.topic, tp.partition)
                self.committed[key] = max(self.committed.get(key, 0), offset)

    async def deliver(self, record: Any) -> None:
        """Route one published record (offset assigned here) to its subscribers."""
        topic = record.topic
        with self._lock:
            offset = next(self._offsets.setdefault(topic, itertools.count()))
            record = dataclasses.replace(record, offset=offset)
            self._log.setdefault(topic, []).append(record)
            targets: list[_FakeConsumer] = []
            groups: dict[str, list[_FakeConsumer]] = {}
            for consumer in _members(self.broker, topic):
                if consumer.group is None:
                    targets.append(consumer)
                elif not consumer.paused:
                    groups.setdefault(consumer.group, []).append(consumer)
            for members in groups.values():
                targets.append(members[next(self._turn) % len(members)])
            if not groups:
                self._backlog.setdefault(topic, []).append(record)
        for consumer in targets:
            await consumer.handle(record)

    async def joined(self, consumer: _FakeConsumer) -> None:
        """A group member started: hand it what its topics kept for a group."""
        with self._lock:
            waiting = [r for t in consumer.topics for r in self._backlog.pop(t, [])]
        for record in waiting:
            await consumer.handle(record)


_active: InMemoryKafka | None = None
_active_lock = threading.Lock()


@contextmanager
def in_memory_kafka() -> Iterator[InMemoryKafka]:
    """Every ``kafka://`` adapter created inside shares one in-memory Kafka (tests only).

    ``AgentRuntime(broker="kafka://kafka.prod:9092")`` and
    ``Worker("kafka://kafka.prod:9092", [...])`` then talk through it in one process, on
    any event loops, with the adapter's code unchanged: its subscribers, commits and
    pauses go to the patched broker. Not nestable; not for production use.
    """
    global _active
    cluster = InMemoryKafka()
    with _active_lock:
        if _active is not None:
            raise InvalidStateError("an in-memory Kafka is already active")
        _active = cluster
    try:
        with ExitStack() as stack:
            stack.enter_context(cluster._test._patch_broker(cluster.broker))
            yield cluster
    finally:
        with _active_lock:
            _active = None


def _members(broker: KafkaBroker, topic: str) -> list[_FakeConsumer]:
    members = []
    for subscriber in broker.subscribers:
        consumer = getattr(subscriber, "consumer", None)
        if isinstance(consumer, _FakeConsumer) and topic in consumer.topics:
            members.append(consumer)
    return members


class _FakeConsumer:
    """What a started subscriber holds instead of an ``AIOKafkaConsumer``."""

    def __init__(self, cluster: InMemoryKafka, group_id: str | None = None, **options: Any) -> None:
        self.cluster = cluster
        self.group = group_id
        #: What an ``AIOKafkaConsumer`` would have been given (``enable_auto_commit``...).
        self.options = options
        self.loop = asyncio.get_running_loop()
        self.topics: tuple[str, ...] = ()
        self.paused = False
        self._stopped = asyncio.Event()
        self._handling: set[asyncio.Task[Any]] = set()

    def subscribe(self, topics: Sequence[str] = (), **_: Any) -> None:
        self.topics = tuple(topics)

    def assign(self, partitions: Sequence[TopicPartition]) -> None:
        self.topics = tuple(p.topic for p in partitions)

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(topic, 0) for topic in self.topics}

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused = True

    async def start(self) -> None:
        if self.group is not None:
            # Joined once its subscriber has published the consumer (after start returns).
            self.loop.call_soon(lambda: self.loop.create_task(self.cluster.joined(self)))

    async def stop(self) -> None:
        self._stopped.set()

    async def getone(self, *partitions: TopicPartition) -> Any:
        """The subscriber's own polling loop: records arrive through ``handle`` instead."""
        await self._stopped.wait()
        raise ConsumerStoppedError

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.cluster.commit(self.group, offsets)

    async def handle(self, record: Any) -> None:
        subscriber = next(
            (s for s in self.cluster.broker.subscribers if getattr(s, "consumer", None) is self),
            None,
        )
        if self._stopped.is_set() or subscriber is None:
            return
        # On the consumer's loop in a task of its own, as a consumer is not the publisher: a
        # publisher cancelled while it waits stops waiting, and the handler goes on.
        process = subscriber.process_message(record)
        if self.loop is asyncio.get_running_loop():
            task = self.loop.create_task(process)
            self._handling.add(task)
            task.add_done_callback(self._handling.discard)
            await asyncio.shield(task)
        else:
            future = asyncio.run_coroutine_threadsafe(process, self.loop)
            await asyncio.shield(asyncio.wrap_future(future))


class _ClusterProducer(FakeProducer):
    def __init__(self, cluster: InMemoryKafka, broker: KafkaBroker) -> None:
        super().__init__(broker, (broker,))
        self._cluster = cluster

    async def publish(self, cmd: Any) -> None:
        record = await build_message(
            message=cmd.body,
            topic=cmd.destination,
            key=cmd.key,
            partition=cmd.partition,
            timestamp_ms=cmd.timestamp_ms,
            headers=cmd.headers,
            correlation_id=cmd.correlation_id,
            reply_to=cmd.reply_to,
            serializer=self.broker.config.fd_config._serializer,
            codec=self.codec,
            id_generator=self.broker.config.id_generator,
        )
        await self._cluster.deliver(record)


class _ClusterTestBroker(TestKafkaBroker):
    def __init__(self, cluster: InMemoryKafka, broker: KafkaBroker) -> None:
        super().__init__(broker, connect_only=True)
        self._cluster = cluster

    @contextmanager
    def _patch_producer(self, broker: KafkaBroker) -> Iterator[None]:
        config = broker.config.broker_config
        previous, config.producer = config.producer, _ClusterProducer(self._cluster, broker)
        previous_builder = config.builder
        config.builder = self._build_consumer
        try:
            yield
        finally:
            config.producer, config.builder = previous, previous_builder

    def _build_consumer(self, **kwargs: Any) -> _FakeConsumer:
        return _FakeConsumer(self._cluster, **kwargs)
