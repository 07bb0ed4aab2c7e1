"""The RabbitMQ adapter's batches (``_amqp``): publishes written together and confirmed
together, acknowledgements coalesced, and never an ack for a delivery nobody settled.

The frame-level tests drive ``_amqp`` with asyncio directly on a stand-in for aiormq's
channel (the adapters live on an asyncio loop, under Trio too); the tests against the
local RabbitMQ server run on both backends.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError, DeliveryError
from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from distributed.brokers import delete_rabbit_queues, on_asyncio
from distributed.test_rabbit_adapter import adapter, queue_counts
from murmur.distributed import _amqp
from murmur.distributed._adapter import Delivery
from murmur.distributed._amqp import Settlements, publish_confirmed, publish_frames

# -- a stand-in for aiormq's channel ----------------------------------------------------


class Channel:
    """What ``_amqp`` uses of aiormq's channel; every frame written is decoded and kept."""

    def __init__(self, number: int = 1) -> None:
        self.number = number
        self.is_closed = False
        self.max_content_size = 131_072 - 8
        self.lock = asyncio.Lock()
        self.delivery_tag = 0
        self.confirmations: dict[int, asyncio.Future[Any]] = {}
        self.write_queue: asyncio.Queue[ChannelFrame] = asyncio.Queue()
        #: One list of frames per write.
        self.writes: list[list[Any]] = []

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def take_writes(self) -> list[list[Any]]:
        while not self.write_queue.empty():
            self.writes.append(_frames(self.write_queue.get_nowait().payload))
        writes, self.writes = self.writes, []
        return writes


def _frames(payload: bytes) -> list[Any]:
    frames = []
    while payload:
        used, _, frame = amqp_frame.unmarshal(payload)
        frames.append(frame)
        payload = payload[used:]
    return frames


def acks(writes: list[list[Any]]) -> list[list[tuple[int, bool]]]:
    """Each write's ack frames: (delivery tag, multiple)."""
    return [[(frame.delivery_tag, frame.multiple) for frame in write] for write in writes]


class Broker:
    """A channel's unacknowledged deliveries as RabbitMQ keeps them, and its rule: an ack
    (single or ``multiple``) must name a delivery still unacknowledged, or the server
    closes the channel."""

    def __init__(self, delivered: int) -> None:
        self.unacked = set(range(1, delivered + 1))
        #: Deliveries the ack frames took, as they took them.
        self.taken: list[int] = []

    def apply(self, frames: Sequence[Any]) -> None:
        for frame in frames:
            tag = frame.delivery_tag
            assert tag in self.unacked, f"unknown delivery tag {tag}: the channel would close"
            if isinstance(frame, spec.Basic.Ack) and frame.multiple:
                covered = sorted(t for t in self.unacked if t <= tag)
            else:
                covered = [tag]
            self.unacked -= set(covered)
            if isinstance(frame, spec.Basic.Ack):
                self.taken += covered


# -- publishes --------------------------------------------------------------------------


def test_a_batch_of_publishes_is_marshalled_as_pamqp_would() -> None:
    messages = [
        ("murmur.tasks.noop", b"x" * 300, _amqp.PERSISTENT),
        ("murmur.reply.c1", b"", _amqp.TRANSIENT),
        ("murmur.tasks._c3_a9", "é".encode() * 12, _amqp.TRANSIENT),
    ]
    frames: list[Any] = []
    for queue, body, mode in messages:
        frames.append(spec.Basic.Publish(exchange="", routing_key=queue))
        properties = spec.Basic.Properties(delivery_mode=mode)
        frames.append(ContentHeader(properties=properties, body_size=len(body)))
        frames += [ContentBody(body[at : at + 100]) for at in range(0, len(body), 100)]
    expected = ChannelFrame.marshall(5, frames).payload
    assert publish_frames(5, messages, 100) == expected


def test_a_batch_is_one_write_and_returns_once_all_are_confirmed() -> None:
    async def main() -> None:
        channel = Channel()
        messages = [(f"q{i}", b"body %d" % i, _amqp.PERSISTENT) for i in range(3)]
        publishing = asyncio.ensure_future(publish_confirmed(channel, messages))
        await asyncio.sleep(0)
        (write,) = channel.take_writes()
        publishes = [f for f in write if isinstance(f, spec.Basic.Publish)]
        assert [p.routing_key for p in publishes] == ["q0", "q1", "q2"]
        assert sorted(channel.confirmations) == [1, 2, 3]
        for tag in (1, 2):
            channel.confirmations.pop(tag).set_result(spec.Basic.Ack(tag))
        await asyncio.sleep(0)
        assert not publishing.done()  # the third is not confirmed yet
        channel.confirmations.pop(3).set_result(spec.Basic.Ack(3))
        await publishing
        assert channel.delivery_tag == 3

    asyncio.run(main())


def test_a_batch_one_of_which_the_broker_refuses_fails() -> None:
    async def main() -> None:
        channel = Channel()
        publishing = asyncio.ensure_future(
            publish_confirmed(channel, [("q", b"a", 1), ("q", b"b", 1)])
        )
        await asyncio.sleep(0)
        channel.confirmations.pop(1).set_result(spec.Basic.Ack(1))
        channel.confirmations.pop(2).set_exception(DeliveryError(None, spec.Basic.Nack(2)))
        with pytest.raises(DeliveryError):
            await publishing

    asyncio.run(main())


def test_a_batch_not_written_gives_its_sequence_numbers_back() -> None:
    async def main() -> None:
        channel = Channel()
        channel.write_queue = asyncio.Queue(maxsize=1)
        channel.write_queue.put_nowait(ChannelFrame(payload=b"", should_close=False))  # full
        publishing = asyncio.ensure_future(publish_confirmed(channel, [("q", b"a", 1)] * 3))
        await asyncio.sleep(0)
        publishing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await publishing
        assert channel.delivery_tag == 0
        assert channel.confirmations == {}

    asyncio.run(main())


def test_a_closed_channel_publishes_nothing() -> None:
    async def main() -> None:
        channel = Channel()
        channel.is_closed = True
        with pytest.raises(ChannelInvalidStateError):
            await publish_confirmed(channel, [("q", b"a", 1)])
        assert channel.write_queue.empty()

    asyncio.run(main())


# -- acknowledgements -------------------------------------------------------------------


def test_acks_settled_in_order_go_as_one_multiple_ack() -> None:
    async def main() -> None:
        channel, settlements = Channel(), Settlements()
        await settlements.ack([(channel, tag) for tag in (1, 2, 3, 4)])
        assert acks(channel.take_writes()) == [[(4, True)]]

    asyncio.run(main())


def test_a_multiple_ack_never_covers_a_delivery_still_held() -> None:
    async def main() -> None:
        channel, settlements = Channel(), Settlements()
        broker = Broker(delivered=7)
        # 1 is still running while 2-5 finish: acked one by one.
        await settlements.ack([(channel, tag) for tag in (3, 2, 5, 4)])
        (write,) = channel.take_writes()
        assert all(not frame.multiple for frame in write)
        broker.apply(write)
        assert broker.unacked == {1, 6, 7}
        await settlements.ack([(channel, 1)])  # a lone ack: no range
        await settlements.ack([(channel, 7), (channel, 6)])  # all below settled: one range
        writes = channel.take_writes()
        assert acks(writes) == [[(1, False)], [(7, True)]]
        for write in writes:
            broker.apply(write)
        assert broker.unacked == set()

    asyncio.run(main())


def test_any_order_of_acks_and_nacks_settles_each_delivery_once() -> None:
    async def main() -> None:
        rng = random.Random(14)
        for _ in range(200):
            channel, settlements = Channel(), Settlements()
            delivered = rng.randint(1, 40)
            broker = Broker(delivered)
            order = list(range(1, delivered + 1))
            rng.shuffle(order)
            acked: set[int] = set()
            while order:
                size = rng.randint(1, 6)
                batch, order = order[:size], order[size:]
                if rng.random() < 0.2:
                    for tag in batch:
                        await settlements.nack(channel, tag)
                else:
                    await settlements.ack([(channel, tag) for tag in batch])
                    acked.update(batch)
                for write in channel.take_writes():
                    broker.apply(write)
                # Only deliveries acked by now were ever taken by an ack frame.
                assert set(broker.taken) <= acked
            assert broker.unacked == set()
            assert sorted(broker.taken) == sorted(acked)

    asyncio.run(main())


def test_acks_on_two_channels_are_kept_apart() -> None:
    async def main() -> None:
        first, second, settlements = Channel(1), Channel(2), Settlements()
        await settlements.ack([(first, 1), (second, 1), (first, 2), (second, 2)])
        assert acks(first.take_writes()) == [[(2, True)]]
        assert acks(second.take_writes()) == [[(2, True)]]

    asyncio.run(main())


def test_a_delivery_from_a_closed_channel_cannot_be_acked() -> None:
    async def main() -> None:
        channel, settlements = Channel(), Settlements()
        channel.is_closed = True  # the connection dropped: the broker requeued it
        with pytest.raises(ChannelInvalidStateError):
            await settlements.ack([(channel, 1)])
        with pytest.raises(ChannelInvalidStateError):
            await settlements.nack(channel, 2)
        assert channel.write_queue.empty()

    asyncio.run(main())


def test_a_lone_ack_soon_is_written_at_once_and_a_burst_together() -> None:
    async def main() -> None:
        channel, settlements = Channel(), Settlements()
        settlements.ack_soon(channel, 1)
        await settlements.drain()  # no timer: the flush task ran at once
        assert acks(channel.take_writes()) == [[(1, False)]]
        for tag in (2, 3, 4, 5):
            settlements.ack_soon(channel, tag)
        await settlements.drain()
        assert acks(channel.take_writes()) == [[(5, True)]]

    asyncio.run(main())


# -- against the local server -----------------------------------------------------------

pytestmark = pytest.mark.anyio


@pytest.fixture
def namespace() -> Iterator[str]:
    namespace = f"t-rbatch-{uuid.uuid4().hex[:10]}"
    yield namespace
    delete_rabbit_queues(namespace, ["a"])


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch of publishes written to the server."""
    sizes: list[int] = []
    original = _amqp.publish_confirmed

    async def counting(channel: Any, messages: Sequence[tuple[str, bytes, int]]) -> None:
        sizes.append(len(messages))
        await original(channel, messages)

    monkeypatch.setattr(_amqp, "publish_confirmed", counting)
    return sizes


async def test_a_lone_publish_is_written_at_once_alone(namespace: str, batches: list[int]) -> None:
    async def scenario() -> tuple[int, int]:
        caller_side = adapter(namespace)
        await caller_side.connect()
        try:
            await caller_side.publish_task("a", b"one")
            await caller_side.publish_task("a", b"two")
            ready, _ = await queue_counts(caller_side.task_channel("a"))
            return ready, len(batches)
        finally:
            await caller_side.aclose()

    # Each returned once confirmed, written on its own: nothing waited for company.
    assert await on_asyncio(scenario) == (2, 2)
    assert batches == [1, 1]


async def test_publishes_made_together_are_written_in_few_batches(
    namespace: str, batches: list[int]
) -> None:
    async def scenario() -> int:
        caller_side = adapter(namespace)
        await caller_side.connect()
        try:
            await caller_side.publish_task("a", b"first")  # declares the queue
            await asyncio.gather(*(caller_side.publish_task("a", b"t%d" % i) for i in range(200)))
            ready, _ = await queue_counts(caller_side.task_channel("a"))
            return ready
        finally:
            await caller_side.aclose()

    assert await on_asyncio(scenario) == 201
    assert sum(batches) == 201
    assert len(batches) <= 3  # the first, then the 200 (the first of them may go alone)


async def test_replies_sent_together_all_arrive(namespace: str, batches: list[int]) -> None:
    async def scenario() -> list[bytes]:
        replies: list[bytes] = []
        got = asyncio.Event()

        def on_reply(data: bytes) -> None:
            replies.append(data)
            if len(replies) == 100:
                got.set()

        caller_side, worker_side = adapter(namespace), adapter(namespace)
        await caller_side.connect()
        await worker_side.connect()
        try:
            address = await caller_side.open_replies("c1", on_reply)
            await asyncio.gather(
                *(worker_side.publish_reply(address, b"%d" % i) for i in range(100))
            )
            await asyncio.wait_for(got.wait(), 10)
            return replies
        finally:
            await worker_side.aclose()
            await caller_side.aclose()

    assert await on_asyncio(scenario) == [b"%d" % i for i in range(100)]
    assert len(batches) < 100


async def test_tasks_acked_out_of_order_leave_the_unsettled_ones_to_the_broker(
    namespace: str,
) -> None:
    async def scenario() -> tuple[int, int]:
        worker_side, caller_side = adapter(namespace), adapter(namespace)
        taken: list[Delivery] = []
        all_taken = asyncio.Event()

        async def take(data: bytes, delivery: Delivery) -> None:
            taken.append(delivery)
            if len(taken) == 10:
                all_taken.set()

        await worker_side.connect()
        await caller_side.connect()
        try:
            await asyncio.gather(*(caller_side.publish_task("a", b"t%d" % i) for i in range(10)))
            await worker_side.consume(["a"], take, prefetch=10, consumer="w")
            await asyncio.wait_for(all_taken.wait(), 10)
            # The later half finishes first, in a burst; the earlier half is still held.
            await asyncio.gather(*(delivery.ack() for delivery in taken[:4:-1]))
            await asyncio.gather(*(delivery.ack() for delivery in taken[1:2]))
        finally:
            await worker_side.aclose()  # what it did not ack goes back to the queue
        try:
            ready, _ = await queue_counts(caller_side.task_channel("a"))
            return len(taken), ready
        finally:
            await caller_side.aclose()

    # 0, 2, 3 and 4 were never acked: back in the queue, none of them covered by an ack.
    assert await on_asyncio(scenario) == (10, 4)
