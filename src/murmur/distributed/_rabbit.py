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
* Control: the durable fanout exchange ``<namespace>.control`` (declared by whichever side
  comes first); each worker binds an exclusive, auto-delete queue of its own to it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from faststream import AckPolicy
from faststream.rabbit import Channel, ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue

from ._adapter import NO_LOGGER, BrokerAdapter, ControlHandler, ReplyHandler, TaskHandler
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
        self._control: Any = None
        self._control_declared = False

    def control_exchange(self) -> RabbitExchange:
        """The fanout exchange every worker's control queue is bound to (declared alike by
        callers and workers)."""
        return RabbitExchange(self.control_channel(), type=ExchangeType.FANOUT, durable=True)

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
