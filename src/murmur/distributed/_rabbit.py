"""``amqp://`` / ``amqps://``: RabbitMQ through FastStream's ``RabbitBroker``.

* Tasks: one durable quorum queue per agent (``<namespace>.tasks.<agent>``) on the
  default exchange, declared (idempotently, same arguments) by whichever side comes first,
  so tasks published before any worker started wait in it. Task messages are persistent.
  Every worker consumes the queue: competing consumers, each with at most ``prefetch``
  unacknowledged messages per queue (quorum queues refuse a channel-wide QoS).
* Quorum queues because they count a message's deliveries (``x-delivery-count``: the
  returns before this delivery, by ``nack`` or by a consumer's connection dropping);
  classic queues only flag a message as redelivered, which cannot bound a task that kills
  its workers. A classic queue of the same name (made by an older Murmur) makes the
  declaration fail: delete it once drained.
* A message is acknowledged only once its result is published; ``nack`` requeues it.
  A worker whose connection drops (it died) has its unacknowledged messages requeued by
  the broker at once.
* Replies: one exclusive, auto-delete queue per caller (``<namespace>.reply.<caller>``),
  gone with the caller's connection.
* Dead letters: the durable classic queue ``<namespace>.dead``, a persistent message
  each, its ``message_id`` the dead letter's id. Listing takes every message without
  acknowledging it (``basic.get``) and puts them all back (``nack`` with requeue: they
  keep their places), so a listing briefly hides them from another; a replay acknowledges
  those it re-queued. (A stream queue would be read without taking, but a message cannot
  be removed from a stream.)
* Control: the durable fanout exchange ``<namespace>.control`` (declared by whichever side
  comes first); each worker binds an exclusive, auto-delete queue of its own to it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from faststream import AckPolicy
from faststream.rabbit import (
    Channel,
    ExchangeType,
    QueueType,
    RabbitBroker,
    RabbitExchange,
    RabbitQueue,
)

from ._adapter import (
    NO_LOGGER,
    BrokerAdapter,
    ControlHandler,
    DeadLetter,
    ReplyHandler,
    TaskHandler,
)
from ._faststream import MESSAGE, hand_over, raw_body

__all__ = ["RabbitAdapter"]

#: Tries at starting a worker's consumers (a fresh quorum queue can refuse the first).
CONSUME_ATTEMPTS = 4

_log = logging.getLogger("murmur.distributed")


class _RabbitDelivery:
    __slots__ = ("_message", "deliveries")

    def __init__(self, message: Any) -> None:
        self._message = message
        #: How many times delivered (see ``Delivery.deliveries``): the quorum queue's
        #: count of earlier deliveries, plus this one.
        self.deliveries = _delivery_count(message.raw_message) + 1

    @property
    def channel(self) -> str:
        queue: str = self._message.raw_message.routing_key or ""
        return queue

    async def ack(self) -> None:
        await self._message.ack()

    async def nack(self) -> None:
        await self._message.nack(requeue=True)


class RabbitAdapter(BrokerAdapter):
    """A durable queue per agent, an exclusive reply queue per caller."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._broker = RabbitBroker(self.url.secret, logger=NO_LOGGER)
        self._declared: set[str] = set()
        self._subscribers: list[Any] = []
        self._replies: Any = None
        self._control: Any = None
        self._control_declared = False

    def control_exchange(self) -> RabbitExchange:
        """The fanout exchange every worker's control queue is bound to (declared alike by
        callers and workers)."""
        return RabbitExchange(self.control_channel(), type=ExchangeType.FANOUT, durable=True)

    def task_queue(self, agent: str) -> RabbitQueue:
        """The queue declaration callers and workers share (any difference would make
        RabbitMQ refuse the second declaration)."""
        return RabbitQueue(self.task_channel(agent), QueueType.QUORUM, durable=True)

    def dead_queue(self) -> RabbitQueue:
        """The queue of this namespace's dead letters."""
        return RabbitQueue(self.dead_channel(), durable=True)

    async def connect(self) -> None:
        await self._broker.start()

    async def aclose(self) -> None:
        try:
            await self.stop_consuming()
            replies, self._replies = self._replies, None
            if replies is not None:
                await replies.stop()
            control, self._control = self._control, None
            if control is not None:
                await control.stop()
        finally:
            await self._broker.stop()  # the exclusive reply queue goes with the connection

    async def publish_task(self, agent: str, data: bytes) -> None:
        name = self.task_channel(agent)
        if name not in self._declared:
            await self._broker.declare_queue(self.task_queue(agent))
            self._declared.add(name)
        await self._broker.publish(data, queue=name, persist=True)

    async def open_replies(self, caller: str, handler: ReplyHandler) -> str:
        name = self.reply_channel(caller)

        async def on_reply(body: Any) -> None:
            handler(body)

        subscriber = self._broker.subscriber(
            RabbitQueue(name, durable=False, exclusive=True, auto_delete=True),
            no_reply=True,
            decoder=raw_body,
        )
        subscriber(on_reply)
        await subscriber.start()
        self._replies = subscriber
        return name

    async def publish_reply(self, address: str, data: bytes) -> None:
        await self._broker.publish(data, queue=address)

    async def consume(
        self, agents: Sequence[str], handler: TaskHandler, *, prefetch: int, consumer: str
    ) -> None:
        async def on_task(body: Any, message: Any = MESSAGE) -> None:
            await hand_over(handler, body, _RabbitDelivery(message))

        for attempt in range(CONSUME_ATTEMPTS):
            try:
                # Declared first: a consumer on a quorum queue RabbitMQ has only just made
                # can crash the connection (3.10: its Raft member is not running yet).
                for agent in agents:
                    await self._broker.declare_queue(self.task_queue(agent))
                # One channel for all of this worker's queues; quorum queues take a QoS per
                # consumer only, so each queue may have ``prefetch`` taken ahead.
                channel = Channel(prefetch_count=prefetch, global_qos=False)
                for agent in agents:
                    subscriber = self._broker.subscriber(
                        self.task_queue(agent),
                        channel=channel,
                        ack_policy=AckPolicy.MANUAL,
                        no_reply=True,
                        decoder=raw_body,
                    )
                    subscriber(on_task)
                    await subscriber.start()
                    self._subscribers.append(subscriber)
            except Exception:
                if attempt + 1 == CONSUME_ATTEMPTS:
                    raise
                # Nothing was taken yet: start over on a fresh connection.
                _log.warning("starting the consumers failed; retrying", exc_info=True)
                await self.stop_consuming()
                await self._broker.stop()
                await asyncio.sleep(0.05 * 2**attempt)
                await self._broker.start()
            else:
                return

    async def stop_consuming(self) -> None:
        subscribers, self._subscribers = self._subscribers, []
        for subscriber in subscribers:
            await subscriber.stop()

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        queue = self.dead_queue()
        await self._broker.declare_queue(queue)
        await self._broker.publish(
            letter.to_json(), queue=queue.name, persist=True, message_id=uuid.uuid4().hex[:16]
        )

    async def _take_all(self) -> list[Any]:
        """Every dead-letter message, oldest first, taken unacknowledged (the caller
        settles each)."""
        queue = await self._broker.declare_queue(self.dead_queue())
        taken = []
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            taken.append(message)
        return taken

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        taken = await self._take_all()
        try:
            return [_letter(message) for message in taken[::-1][:limit]]
        finally:
            await _put_back(taken)

    async def replay_dead_letters(self, ids: Sequence[str] | None) -> list[DeadLetter]:
        taken = await self._take_all()
        wanted = None if ids is None else set(ids)
        replayed: list[DeadLetter] = []
        queued: set[str] = set()
        try:
            for message in list(taken):
                if wanted is not None and message.message_id not in wanted:
                    continue
                letter = _letter(message)
                if letter.fingerprint not in queued:  # a copy is only removed
                    await self.publish_task(letter.agent, letter.data)
                    queued.add(letter.fingerprint)
                await message.ack()
                taken.remove(message)
                replayed.append(letter)
        finally:
            await _put_back(taken)
        return replayed

    async def publish_control(self, data: bytes) -> None:
        exchange = self.control_exchange()
        if not self._control_declared:
            # Published to an exchange that does not exist, RabbitMQ would close the channel.
            await self._broker.declare_exchange(exchange)
            self._control_declared = True
        # Not mandatory: with no worker listening there is nobody to tell.
        await self._broker.publish(data, exchange=exchange, mandatory=False)

    async def open_control(self, handler: ControlHandler) -> None:
        async def on_control(body: Any) -> None:
            handler(body)

        queue = f"{self.control_channel()}.{uuid.uuid4().hex[:12]}"
        subscriber = self._broker.subscriber(
            RabbitQueue(queue, durable=False, exclusive=True, auto_delete=True),
            exchange=self.control_exchange(),
            no_reply=True,
            decoder=raw_body,
        )
        subscriber(on_control)
        await subscriber.start()
        self._control = subscriber


def _delivery_count(message: Any) -> int:
    """A quorum queue's ``x-delivery-count`` header (earlier deliveries): 0 if absent."""
    count = (message.headers or {}).get("x-delivery-count", 0)
    return count if isinstance(count, int) and count > 0 else 0


def _letter(message: Any) -> DeadLetter:
    return DeadLetter.from_json(message.body, message.message_id or "")


async def _put_back(messages: list[Any]) -> None:
    for message in messages:
        await message.nack(requeue=True)
