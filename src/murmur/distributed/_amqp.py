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
import logging
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError
from pamqp import commands as spec

__all__ = [
    "PERSISTENT",
    "TRANSIENT",
    "Consumer",
    "Publisher",
    "Settlements",
    "publish_confirmed",
    "publish_frames",
]

_log = logging.getLogger("murmur.distributed")

#: ``delivery_mode`` of a message the broker keeps on disk, and of one it may lose.
PERSISTENT = 2
TRANSIENT = 1

#: AMQP 0-9-1 frame types, a frame's end octet, the parts of a frame this module writes.
_METHOD, _CONTENT_HEADER, _BODY = 1, 2, 3
_END = b"\xce"
_FRAME = struct.Struct(">BHI")
_HEADER = struct.Struct(">BHIHHQHB")
#: ``basic.publish``'s class and method ids, its reserved short and the exchange (the
#: default exchange: an empty short string).
_PUBLISH = struct.pack(">HHHB", 60, 40, 0, 0)

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


def publish_frames(
    channel_number: int, messages: Sequence[tuple[str, bytes, int]], limit: int
) -> bytes:
    """The frames publishing ``messages`` (queue, body, delivery mode) on the default
    exchange, bodies cut at ``limit`` bytes a frame: AMQP 0-9-1's ``basic.publish``
    method frame, content header (only ``delivery-mode`` set) and body frames, as pamqp
    would marshal them (written here: a batch is marshalled in a fraction of the time)."""
    out = bytearray()
    for queue, body, mode in messages:
        key = queue.encode()
        # basic.publish: the routing key, no mandatory/immediate bits.
        method = _PUBLISH + bytes((len(key),)) + key + b"\x00"
        out += _FRAME.pack(_METHOD, channel_number, len(method)) + method + _END
        # Content header: class 60, weight 0, body size, property flags (delivery-mode).
        out += _HEADER.pack(_CONTENT_HEADER, channel_number, 15, 60, 0, len(body), 0x1000, mode)
        out += _END
        for at in range(0, len(body), limit):
            chunk = body[at : at + limit]
            out += _FRAME.pack(_BODY, channel_number, len(chunk)) + chunk + _END
    return bytes(out)


async def publish_confirmed(channel: Any, messages: Sequence[tuple[str, bytes, int]]) -> None:
    """Publish ``messages`` (queue, body, delivery mode) on the default exchange of the
    aiormq ``channel`` (in confirm mode) in one write; returns once the broker has
    confirmed them all.

    Raises:
        ChannelInvalidStateError: the channel is closed (the connection was lost).
        aiormq.exceptions.DeliveryError: the broker refused one.
    """
    channel = _open(channel)
    payload = publish_frames(channel.number, messages, channel.max_content_size)
    confirmations: list[asyncio.Future[Any]] = []
    async with channel.lock:
        first = channel.delivery_tag + 1
        for tag in range(first, first + len(messages)):
            confirmation = channel.create_future()
            channel.confirmations[tag] = confirmation
            confirmations.append(confirmation)
        channel.delivery_tag = first + len(messages) - 1
        try:
            await channel.write_queue.put(ChannelFrame(payload=payload, should_close=False))
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

    ``ack`` is given deliveries (aiormq channel, delivery tag) settled together, and
    ``ack_soon`` one to acknowledge with the others given meanwhile, without waiting;
    ``nack`` sends a ``basic.nack`` (requeue) at once. Every delivery must be settled once,
    on the channel it came from; one from a channel since closed cannot be (the broker
    requeued it when the channel closed): ``ChannelInvalidStateError``.
    """

    def __init__(self) -> None:
        self._frontiers: dict[int, tuple[Any, _Frontier]] = {}
        #: Frames go out in the order their acks were worked out (an ack covering a tag
        #: must never reach the broker before that tag's own ack).
        self._lock = asyncio.Lock()
        self._soon: list[tuple[Any, int]] = []
        self._flushing: asyncio.Task[None] | None = None

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
        async with self._lock:
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

    def ack_soon(self, channel: Any, tag: int) -> None:
        """Acknowledge a delivery together with the others given meanwhile, in a task this
        starts at once if none is under way; a failure is logged (what was not
        acknowledged, the broker delivers again)."""
        self._soon.append((channel, tag))
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        try:
            while self._soon:
                batch, self._soon = self._soon, []
                try:
                    await self.ack(batch)
                except Exception:
                    _log.debug("could not acknowledge %d deliveries", len(batch), exc_info=True)
        finally:
            self._flushing = None

    async def drain(self) -> None:
        """Wait for the acknowledgements ``ack_soon`` has under way."""
        while self._flushing is not None:
            await asyncio.wait([self._flushing])

    async def nack(self, channel: Any, tag: int) -> None:
        async with self._lock:
            await _write(_open(channel), [spec.Basic.Nack(delivery_tag=tag, requeue=True)])
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
