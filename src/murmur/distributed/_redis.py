"""``redis://`` / ``rediss://``: Redis Streams through FastStream's ``RedisBroker``.

* Tasks: one stream per agent (``<namespace>.tasks.<agent>``), read by the consumer group
  ``<namespace>-workers``; each worker is a consumer of the group (competing consumers).
  The group is created at the start of the stream (id 0) by whichever side comes first,
  so tasks published before any worker started are not skipped. An entry is acknowledged
  (XACK) only once its result is published; until then it stays in the group's pending
  list.
* Replies: one stream per caller (``<namespace>.reply.<caller>``), read with XREAD from its
  start, deleted when the caller closes.
* Outages: once connected, every command that loses its connection reconnects and runs
  again (``_Reconnecting``) for up to ``RECONNECT_SECONDS``; FastStream's reading loops
  retry a failed read by themselves. What a restarted server still has depends on its
  persistence (an append-only file keeps the streams, groups and pending entries).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from faststream import AckPolicy
from faststream.redis import RedisBroker, StreamSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from ._adapter import NO_LOGGER, BrokerAdapter, ReplyHandler, TaskHandler
from ._faststream import MESSAGE as _MESSAGE
from ._faststream import raw_body as _raw_body
from ._outage import RECONNECT_SECONDS, OutageLog, backoff

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
_T = TypeVar("_T")
#: Entries a stopping worker looks at for ones it read but never ran.
_STRANDED_MAX = 10_000


class _Reconnecting(Retry):
    """redis-py's retry policy for every connection of one adapter: a command that fails
    on its connection (ConnectionError, TimeoutError) reconnects and runs again, backing
    off, for up to ``window`` seconds; the outage is logged once.

    ``window`` is 0 until the adapter has connected: an unreachable broker fails
    ``connect`` at once. One instance is shared by the pool's connections (redis-py copies
    a policy into each connection; this one is not copied)."""

    def __init__(self, outage: OutageLog) -> None:
        super().__init__(NoBackoff(), 0)
        self.window = 0.0
        self.outage = outage

    def __deepcopy__(self, memo: dict[int, Any]) -> _Reconnecting:
        return self

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[_T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> _T:
        failures = 0
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.window
        while True:
            try:
                result = await do()
            except self._supported_errors as error:
                if is_retryable is not None and not is_retryable(error):
                    raise
                failures += 1
                await (fail(error, failures) if with_failure_count else fail(error))
                if loop.time() >= give_up:
                    raise
                self.outage.lost(error)
                await asyncio.sleep(backoff(failures))
            else:
                if self.outage.down:
                    self.outage.back()
                return result


class _RedisDelivery:
    __slots__ = ("_adapter", "_message", "_slots")

    #: How many times delivered (see ``Delivery.deliveries``); 1 until counted.
    deliveries = 1

    def __init__(self, message: Any, slots: asyncio.Semaphore, adapter: RedisAdapter) -> None:
        self._message = message
        self._slots = slots
        self._adapter = adapter
        adapter._held.add(self._key)

    @property
    def _key(self) -> tuple[str, bytes]:
        raw = self._message.raw_message
        return raw["channel"], _as_bytes(raw["message_ids"][0])

    async def ack(self) -> None:
        self._adapter._held.discard(self._key)
        async with self._slots:
            await self._message.ack()

    async def nack(self) -> None:
        self._adapter._held.discard(self._key)
        stream, entry = self._key
        await self._adapter._requeue(stream, entry, self._message.raw_message["data"])


class RedisAdapter(BrokerAdapter):
    """Redis Streams with a consumer group per namespace."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._retry = _Reconnecting(OutageLog(self.url.redacted))
        self._broker = RedisBroker(
            self.url.secret,
            logger=NO_LOGGER,
            max_connections=_MAX_CONNECTIONS,
            retry=self._retry,
        )
        self._slots = asyncio.Semaphore(COMMAND_SLOTS)
        self._client: Any = None
        self._groups: set[str] = set()
        self._subscribers: list[Any] = []
        self._replies: Any = None
        self._reply_stream: str | None = None
        #: Entries handed to the worker and not settled yet: (stream, entry id).
        self._held: set[tuple[str, bytes]] = set()
        #: Streams consumed, and as which consumer of the group.
        self._consumed: list[tuple[str, str]] = []

    @property
    def group(self) -> str:
        return f"{self.namespace}-workers"

    async def connect(self) -> None:
        await self._broker.start()
        self._client = await self._broker.connect()
        await self._client.ping()  # the client connects lazily: fail here, not mid-consume
        self._retry.window = RECONNECT_SECONDS

    async def aclose(self) -> None:
        self._retry.window = 0.0  # closing: a broker gone now is not waited for
        try:
            await self.stop_consuming()
            replies, self._replies = self._replies, None
            if replies is not None:
                await replies.stop()
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
            await handler(body, _RedisDelivery(message, self._slots, self))

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
            self._consumed.append((stream, consumer))

    async def stop_consuming(self) -> None:
        subscribers, self._subscribers = self._subscribers, []
        for subscriber in subscribers:
            await subscriber.stop()
        # Entries read for this consumer but never handed to the worker (a read batch cut
        # short by the stop) would stay pending on it: queued again for another worker.
        consumed, self._consumed = self._consumed, []
        for stream, consumer in consumed:
            pending = await self._client.xpending_range(
                stream, self.group, min="-", max="+", count=_STRANDED_MAX, consumername=consumer
            )
            for row in pending:
                entry = _as_bytes(row["message_id"])
                if (stream, entry) in self._held:
                    continue
                found = await self._client.xrange(stream, min=entry, max=entry)
                await self._requeue(stream, entry, found[0][1] if found else None)

    async def _requeue(self, stream: str, entry: bytes, fields: Any) -> None:
        """Redis cannot hand a pending entry back to its group: the entry is queued again
        (a new entry at the end of the stream, for any worker) and this one acknowledged
        and deleted, in one transaction. Should that fail, it stays pending."""
        async with self._slots, self._client.pipeline(transaction=True) as pipe:
            if fields:
                pipe.xadd(stream, fields)
            pipe.xack(stream, self.group, entry)
            pipe.xdel(stream, entry)
            await pipe.execute()


def _as_bytes(entry: str | bytes) -> bytes:
    return entry if isinstance(entry, bytes) else entry.encode()
