"""The RabbitMQ adapter's hot path, below FastStream and aio-pika: batches on aiormq channels.

FastStream (through aio-pika) sends each message as a write of its own and waits for its
confirmation before the next can be written, and wraps each delivery in layers of objects.
Here:

* ``publish_confirmed`` writes a batch of messages as one write and awaits their publisher
  confirmations together (RabbitMQ confirms several in one frame);
* ``Settlements`` acknowledges a batch of deliveries in as few frames as it can: one
  ``basic.ack`` with ``multiple`` up to the highest tag below which every delivery of the
  channel is settled (tags are consecutive per channel), one frame each for the rest.
  A delivery is only ever covered by an ack once it was itself settled (acked or nacked),
  so a ``multiple`` ack never takes a delivery nobody settled;
* ``Consumer`` consumes on the aiormq channel under an aio-pika robust channel (its
  deliveries handed over as aiormq gives them), and consumes again each time aio-pika
  reopens that channel after an outage.

Built on aiormq's own channel state, used as its ``basic_publish`` uses it: the channel's
publish sequence (``delivery_tag``, ``confirmations``, under ``lock``) and the
connection's frame queue (``write_queue``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

__all__ = ["PERSISTENT", "TRANSIENT", "Consumer", "Settlements", "publish_confirmed"]

#: ``delivery_mode`` of a message the broker keeps on disk, and of one it may lose.
PERSISTENT = 2
TRANSIENT = 1

#: An aiormq delivery's handler.
OnDelivery = Callable[[Any], Awaitable[None]]


def _open(channel: Any) -> Any:
    """``channel`` (aiormq's), if it is open."""
    if channel is None or channel.is_closed:
        raise ChannelInvalidStateError("the channel is closed (reconnecting)")
    return channel


async def _write(channel: Any, frames: list[Any]) -> None:
    """Queue ``frames`` for ``channel`` as one write on its connection."""
    await channel.write_queue.put(ChannelFrame.marshall(channel.number, frames))


async def publish_confirmed(channel: Any, messages: Sequence[tuple[str, bytes, int]]) -> None:
    """Publish ``messages`` (queue, body, delivery mode) on the default exchange of the
    aiormq ``channel`` (in confirm mode) in one write; returns once the broker has
    confirmed them all.

    Raises:
        ChannelInvalidStateError: the channel is closed (the connection was lost).
        aiormq.exceptions.DeliveryError: the broker refused one.
    """
    channel = _open(channel)
    frames: list[Any] = []
    confirmations: list[asyncio.Future[Any]] = []
    limit = channel.max_content_size
    async with channel.lock:
        first = channel.delivery_tag + 1
        for queue, body, mode in messages:
            channel.delivery_tag += 1
            confirmation = channel.create_future()
            channel.confirmations[channel.delivery_tag] = confirmation
            confirmations.append(confirmation)
            frames.append(spec.Basic.Publish(exchange="", routing_key=queue))
            frames.append(
                ContentHeader(
                    properties=spec.Basic.Properties(delivery_mode=mode), body_size=len(body)
                )
            )
            frames.extend(ContentBody(body[at : at + limit]) for at in range(0, len(body), limit))
        try:
            await _write(channel, frames)
        except BaseException:
            # Not written: the sequence numbers go back (as aiormq's own publish does).
            channel.delivery_tag = first - 1
            for tag in range(first, first + len(messages)):
                channel.confirmations.pop(tag, None)
            for confirmation in confirmations:
                confirmation.cancel()
            raise
    await asyncio.gather(*confirmations)


class _Frontier:
    """One channel's settled deliveries: every tag up to ``upto``, and those above it."""

    __slots__ = ("above", "upto")

    def __init__(self) -> None:
        self.upto = 0
        self.above: set[int] = set()

    def settle(self, tags: Sequence[int]) -> tuple[int, list[int]]:
        """Mark ``tags`` settled; the tag of ``tags`` to ack with ``multiple`` (0: none:
        every tag up to it is settled, and it is one the broker still holds) and the tags
        of ``tags`` to ack one by one."""
        above = self.above
        above.update(tags)
        upto = self.upto
        while upto + 1 in above:
            upto += 1
            above.discard(upto)
        self.upto = upto
        covered = [tag for tag in tags if tag <= upto]
        if len(covered) < 2:  # a lone ack needs no range
            return 0, list(tags)
        return max(covered), [tag for tag in tags if tag > upto]


class Settlements:
    """Acknowledgements of deliveries, several in as few frames as possible, per channel.

    ``ack`` is given deliveries (aiormq channel, delivery tag) settled together; ``nack``
    sends a ``basic.nack`` (requeue) at once. Every delivery must be settled once, on the
    channel it came from; one from a channel since closed cannot be (the broker requeued
    it when the channel closed): ``ChannelInvalidStateError``.
    """

    def __init__(self) -> None:
        self._frontiers: dict[int, tuple[Any, _Frontier]] = {}

    def _frontier(self, channel: Any) -> _Frontier:
        entry = self._frontiers.get(id(channel))
        if entry is None or entry[0] is not channel:
            # A new channel (or a closed one's id reused): its tags start again at 1.
            self._frontiers = {
                key: value for key, value in self._frontiers.items() if not value[0].is_closed
            }
            entry = (channel, _Frontier())
            self._frontiers[id(channel)] = entry
        return entry[1]

    async def ack(self, deliveries: Sequence[tuple[Any, int]]) -> None:
        by_channel: dict[int, tuple[Any, list[int]]] = {}
        for channel, tag in deliveries:
            by_channel.setdefault(id(channel), (channel, []))[1].append(tag)
        closed = None
        for channel, tags in by_channel.values():
            if channel.is_closed:
                closed = channel
                continue
            multiple, single = self._frontier(channel).settle(tags)
            frames: list[Any] = []
            if multiple:
                frames.append(spec.Basic.Ack(delivery_tag=multiple, multiple=True))
            frames.extend(spec.Basic.Ack(delivery_tag=tag) for tag in single)
            await _write(channel, frames)
        if closed is not None:
            raise ChannelInvalidStateError(f"{closed!r} closed: its deliveries were requeued")

    async def nack(self, channel: Any, tag: int) -> None:
        await _write(_open(channel), [spec.Basic.Nack(delivery_tag=tag, requeue=True)])
        # Settled once the nack is queued ahead of any ack that covers it.
        self._frontier(channel).settle([tag])


class Consumer:
    """Consumes queues on an aio-pika robust channel's aiormq channel, again after each
    reopening of the channel (aio-pika restores the channel's QoS and declarations, not
    consumers made below it)."""

    def __init__(self, robust: Any, on_delivery: OnDelivery) -> None:
        self._robust = robust
        self._on_delivery = on_delivery
        #: Consumer tag by queue.
        self._queues: dict[str, str] = {}
        self._channel: Any = None
        self._on = True
        robust.reopen_callbacks.add(self._reopened)

    async def consume(self, queue: str, tag: str) -> None:
        """Start consuming ``queue`` (under the consumer tag ``tag``)."""
        self._queues[queue] = tag
        channel = self._channel = await self._robust.get_underlay_channel()
        await channel.basic_consume(queue, self._on_delivery, consumer_tag=tag)

    async def _reopened(self, robust: Any) -> None:
        self._channel = await robust.get_underlay_channel()
        if self._on:
            for queue, tag in self._queues.items():
                await self._channel.basic_consume(queue, self._on_delivery, consumer_tag=tag)

    async def stop(self) -> None:
        """Consume no more (deliveries on their way are still handed over)."""
        self._on = False
        queues, self._queues = self._queues, {}
        channel = self._channel
        if channel is None or channel.is_closed:
            return
        for tag in queues.values():
            await channel.basic_cancel(tag)


class Publisher:
    """Publishes in batches (``publish_confirmed``) on an aio-pika robust channel in
    confirm mode, on whichever aiormq channel it has now (a new one after each outage)."""

    def __init__(self, robust: Any, channel: Any) -> None:
        self._robust = robust
        self._channel = channel
        robust.reopen_callbacks.add(self._reopened)

    @classmethod
    async def open(cls, connection: Any) -> Publisher:
        """A publisher on a channel of its own on aio-pika's robust ``connection``."""
        robust = await connection.channel(publisher_confirms=True)
        return cls(robust, await robust.get_underlay_channel())

    async def _reopened(self, robust: Any) -> None:
        self._channel = await robust.get_underlay_channel()

    async def publish(self, messages: Sequence[tuple[str, bytes, int]]) -> None:
        """``publish_confirmed`` on the channel now."""
        await publish_confirmed(self._channel, messages)
