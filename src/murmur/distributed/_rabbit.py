"""``amqp://`` / ``amqps://``: RabbitMQ through FastStream's ``RabbitBroker``.

* Tasks: one durable queue per agent (``<namespace>.tasks.<agent>``) on the default
  exchange, declared (idempotently, same arguments) by whichever side comes first, so
  tasks published before any worker started wait in it. Task messages are persistent.
  Every worker consumes the queue: competing consumers, each with at most ``prefetch``
  unacknowledged messages (channel QoS).
* A message is acknowledged only once its result is published; ``nack`` requeues it.
  A worker whose connection drops (it died) has its unacknowledged messages requeued by
  the broker at once.
* Replies: one exclusive, auto-delete queue per caller (``<namespace>.reply.<caller>``),
  gone with the caller's connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from faststream import AckPolicy
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue

from ._adapter import NO_LOGGER, BrokerAdapter, ReplyHandler, TaskHandler
from ._faststream import MESSAGE, hand_over, raw_body

__all__ = ["RabbitAdapter"]


class _RabbitDelivery:
    __slots__ = ("_message",)

    #: How many times delivered (see ``Delivery.deliveries``); 1 until counted.
    deliveries = 1

    def __init__(self, message: Any) -> None:
        self._message = message

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

    def task_queue(self, agent: str) -> RabbitQueue:
        """The queue declaration callers and workers share (any difference would make
        RabbitMQ refuse the second declaration)."""
        return RabbitQueue(self.task_channel(agent), durable=True)

    async def connect(self) -> None:
        await self._broker.start()

    async def aclose(self) -> None:
        try:
            await self.stop_consuming()
            replies, self._replies = self._replies, None
            if replies is not None:
                await replies.stop()
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

        # One channel for all of this worker's queues, its QoS shared between them.
        channel = Channel(prefetch_count=prefetch, global_qos=True)
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

    async def stop_consuming(self) -> None:
        subscribers, self._subscribers = self._subscribers, []
        for subscriber in subscribers:
            await subscriber.stop()
