"""``redis://`` / ``rediss://``: Redis Streams through FastStream's ``RedisBroker``.

* Tasks: one stream per agent (``<namespace>.tasks.<agent>``), read by the consumer group
  ``<namespace>-workers``; each worker is a consumer of the group (competing consumers).
  The group is created at the start of the stream (id 0) by whichever side comes first,
  so tasks published before any worker started are not skipped. An entry is acknowledged
  (XACK) only once its result is published; until then it stays in the group's pending
  list.
* Replies: one stream per caller (``<namespace>.reply.<caller>``), read with XREAD from its
  start, deleted when the caller closes.
* Control: the pub/sub channel ``<namespace>.control``, subscribed to by every worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from faststream import AckPolicy
from faststream.redis import RedisBroker, StreamSub
from redis.exceptions import ResponseError

from ._adapter import NO_LOGGER, BrokerAdapter, ControlHandler, ReplyHandler, TaskHandler
from ._faststream import MESSAGE as _MESSAGE
from ._faststream import raw_body as _raw_body

__all__ = ["RedisAdapter"]

#: Commands (publish, ack) one adapter sends at once. redis-py's pool fails a command
#: outright (MaxConnectionsError) rather than wait for a connection, so the adapter waits
#: here instead; each subscriber's blocking read holds one more connection.
COMMAND_SLOTS = 64
#: A reply stream keeps at most this many entries (approximately; its caller reads them as
#: they come) and goes this long after its last reply.
REPLY_MAXLEN = 100_000
REPLY_TTL_SECONDS = 3600
_MAX_CONNECTIONS = 2**16


class _RedisDelivery:
    __slots__ = ("_message", "_slots")

    #: How many times delivered (see ``Delivery.deliveries``); 1 until counted.
    deliveries = 1

    def __init__(self, message: Any, slots: asyncio.Semaphore) -> None:
        self._message = message
        self._slots = slots

    async def ack(self) -> None:
        async with self._slots:
            await self._message.ack()

    async def nack(self) -> None:
        # Stays in the group's pending list, for a live worker to claim.
        await self._message.nack()


class RedisAdapter(BrokerAdapter):
    """Redis Streams with a consumer group per namespace."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._broker = RedisBroker(
            self.url.secret, logger=NO_LOGGER, max_connections=_MAX_CONNECTIONS
        )
        self._slots = asyncio.Semaphore(COMMAND_SLOTS)
        self._client: Any = None
        self._groups: set[str] = set()
        self._subscribers: list[Any] = []
        self._replies: Any = None
        self._reply_stream: str | None = None
        self._control: Any = None

    @property
    def group(self) -> str:
        return f"{self.namespace}-workers"

    async def connect(self) -> None:
        await self._broker.start()
        self._client = await self._broker.connect()
        await self._client.ping()  # the client connects lazily: fail here, not mid-consume

    async def aclose(self) -> None:
        try:
            await self.stop_consuming()
            replies, self._replies = self._replies, None
            if replies is not None:
                await replies.stop()
            control, self._control = self._control, None
            if control is not None:
                await control.stop()
            stream, self._reply_stream = self._reply_stream, None
            if stream is not None and self._client is not None:
                await self._client.delete(stream)
        finally:
            await self._broker.stop()

    async def _ensure_group(self, stream: str) -> None:
        if stream in self._groups:
            return
        try:
            await self._client.xgroup_create(stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)

    async def publish_task(self, agent: str, data: bytes) -> None:
        stream = self.task_channel(agent)
        async with self._slots:
            await self._ensure_group(stream)
            await self._broker.publish(data, stream=stream)

    async def open_replies(self, caller: str, handler: ReplyHandler) -> str:
        stream = self.reply_channel(caller)

        async def on_reply(body: Any) -> None:
            handler(body)

        subscriber = self._broker.subscriber(
            stream=StreamSub(stream, last_id="0-0"), no_reply=True, decoder=_raw_body
        )
        subscriber(on_reply)
        await subscriber.start()
        self._replies, self._reply_stream = subscriber, stream
        return stream

    async def publish_reply(self, address: str, data: bytes) -> None:
        async with self._slots, self._client.pipeline(transaction=False) as pipe:
            # One round trip: the reply, a cap on the stream's length, and an expiry, so a
            # reply that arrives after its caller closed (and deleted the stream) does not
            # leave the stream behind for good.
            await self._broker.publish(data, stream=address, maxlen=REPLY_MAXLEN, pipeline=pipe)
            pipe.expire(address, REPLY_TTL_SECONDS)
            await pipe.execute()

    async def consume(
        self, agents: Sequence[str], handler: TaskHandler, *, prefetch: int, consumer: str
    ) -> None:
        async def on_task(body: Any, message: Any = _MESSAGE) -> None:
            await handler(body, _RedisDelivery(message, self._slots))

        for agent in agents:
            stream = self.task_channel(agent)
            await self._ensure_group(stream)
            subscriber = self._broker.subscriber(
                stream=StreamSub(stream, group=self.group, consumer=consumer, max_records=prefetch),
                ack_policy=AckPolicy.MANUAL,
                no_reply=True,
                decoder=_raw_body,
            )
            subscriber(on_task)
            await subscriber.start()
            self._subscribers.append(subscriber)

    async def stop_consuming(self) -> None:
        subscribers, self._subscribers = self._subscribers, []
        for subscriber in subscribers:
            await subscriber.stop()

    async def publish_control(self, data: bytes) -> None:
        async with self._slots:
            await self._broker.publish(data, channel=self.control_channel())

    async def open_control(self, handler: ControlHandler) -> None:
        async def on_control(body: Any) -> None:
            handler(body)

        subscriber = self._broker.subscriber(
            channel=self.control_channel(), no_reply=True, decoder=_raw_body
        )
        subscriber(on_control)
        await subscriber.start()
        self._control = subscriber
