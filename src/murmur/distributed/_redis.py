"""``redis://`` / ``rediss://``: Redis Streams through FastStream's ``RedisBroker``.

* Tasks: one stream per agent (``<namespace>.tasks.<agent>``), read by the consumer group
  ``<namespace>-workers``; each worker is a consumer of the group (competing consumers).
  The group is created at the start of the stream (id 0) by whichever side comes first,
  so tasks published before any worker started are not skipped. An entry is acknowledged
  (XACK) only once its result is published; until then it stays in the group's pending
  list.
* Redelivery (FastStream does not reclaim pending entries on Redis before 8.4): while a
  worker consumes, it claims (XAUTOCLAIM) entries of its streams that no worker has
  touched for ``redeliver_after`` seconds (their worker died), as many as it has room for,
  at most every ``CLAIM_EVERY`` seconds, and runs them as it runs fresh ones; each comes
  with its delivery count. While it runs, it touches (XCLAIM JUSTID) the entries it holds
  every third of ``redeliver_after``, so a long task is never taken from a live worker.
  ``nack`` hands an entry to the group's ``RELEASED`` pseudo-consumer with an idle time of
  a day: the next claim by any worker takes it (and its own touches no longer keep it).
* Replies: one stream per caller (``<namespace>.reply.<caller>``), read with XREAD from its
  start, deleted when the caller closes.
* Outages: once connected, every command that loses its connection reconnects and runs
  again (``_Reconnecting``) for up to ``RECONNECT_SECONDS``; FastStream's reading loops
  retry a failed read by themselves. What a restarted server still has depends on its
  persistence (an append-only file keeps the streams, groups and pending entries).
* Dead letters: the stream ``<namespace>.dead``, one entry (field ``letter``) each, its
  entry id the dead letter's id; a replay re-queues the entry and deletes it (XDEL).
* Control: the pub/sub channel ``<namespace>.control``, subscribed to by every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from faststream import AckPolicy
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.message import bDATA_KEY
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from ._adapter import (
    NO_LOGGER,
    BrokerAdapter,
    ControlHandler,
    DeadLetter,
    ReplyHandler,
    TaskHandler,
)
from ._faststream import MESSAGE as _MESSAGE
from ._faststream import hand_over
from ._faststream import raw_body as _raw_body
from ._outage import RECONNECT_SECONDS, OutageLog, backoff

__all__ = ["RedisAdapter"]

_T = TypeVar("_T")

#: Commands (publish, ack) one adapter sends at once. redis-py's pool fails a command
#: outright (MaxConnectionsError) rather than wait for a connection, so the adapter waits
#: here instead; each subscriber's blocking read holds one more connection.
COMMAND_SLOTS = 64
#: A reply stream keeps at most this many entries (approximately; its caller reads them as
#: they come) and goes this long after its last reply.
REPLY_MAXLEN = 100_000
REPLY_TTL_SECONDS = 3600
_MAX_CONNECTIONS = 2**16
#: Most seconds between a consuming worker's claims of idle entries.
CLAIM_EVERY = 1.0
#: The pseudo-consumer a nacked entry is handed to, idle for ``RELEASED_IDLE_MS``: no
#: worker touches it, and the next claim takes it whatever its ``redeliver_after``.
RELEASED = "murmur-released"
RELEASED_IDLE_MS = 86_400_000

_log = logging.getLogger("murmur.distributed")

# Each script acts on one stream (KEYS[1]) of the group ARGV[1], atomically, so that an
# entry another worker has claimed meanwhile is never taken back.

#: Touch (idle 0, delivery count unchanged) every entry the consumer ARGV[2] holds.
_TOUCH = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', ARGV[3], ARGV[2])
local ids = {}
for i, entry in ipairs(pending) do
    ids[#ids + 1] = entry[1]
    if #ids == 500 or i == #pending then
        ids[#ids + 1] = 'JUSTID'
        redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))
        ids = {}
    end
end
return #pending
"""
#: Hand the entry ARGV[3], if the consumer ARGV[2] holds it, to ARGV[4], idle ARGV[5] ms.
_RELEASE = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2]) == 0 then
    return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[4], 0, ARGV[3], 'IDLE', ARGV[5], 'JUSTID')
return 1
"""
#: XAUTOCLAIM for the consumer ARGV[2] (idle ARGV[3] ms, cursor ARGV[4], count ARGV[5]);
#: returns the next cursor and ``{id, fields, delivery count}`` per entry claimed.
_CLAIM = """
local claimed = redis.call(
    'XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {}
for _, entry in ipairs(claimed[2]) do
    if entry[2] then
        local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
        local count = 1
        if pending[1] then count = pending[1][4] end
        out[#out + 1] = {entry[1], entry[2], count}
    end
end
return {claimed[1], out}
"""


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
    __slots__ = ("_adapter", "_entry", "_stream", "deliveries")

    def __init__(
        self, adapter: RedisAdapter, stream: str, entry: bytes, deliveries: int = 1
    ) -> None:
        self._adapter = adapter
        self._stream = stream
        self._entry = entry
        #: How many times delivered (see ``Delivery.deliveries``).
        self.deliveries = deliveries
        adapter._held.add(self)

    @property
    def channel(self) -> str:
        return self._stream

    async def ack(self) -> None:
        adapter = self._adapter
        adapter._held.discard(self)
        async with adapter._slots:
            await adapter._client.xack(self._stream, adapter.group, self._entry)

    async def nack(self) -> None:
        self._adapter._held.discard(self)
        await self._adapter._release(self._stream, self._entry)


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
        #: The consumer's streams and name (set by ``consume``).
        self._streams: list[str] = []
        self._consumer = ""
        #: Entries handed to the worker and not settled yet.
        self._held: set[_RedisDelivery] = set()
        self._claiming: asyncio.Task[None] | None = None
        self._touching: asyncio.Task[None] | None = None
        # The loops' own stop signals too: under Python 3.11, redis-py (through
        # asyncio.wait_for) can swallow a cancellation that arrives as a reply does.
        self._claim_on = self._touch_on = False
        self._scripts: dict[str, Any] = {}
        self._control: Any = None

    @property
    def group(self) -> str:
        return f"{self.namespace}-workers"

    async def connect(self) -> None:
        await self._broker.start()
        self._client = await self._broker.connect()
        await self._client.ping()  # the client connects lazily: fail here, not mid-consume
        self._retry.window = RECONNECT_SECONDS
        for name, script in (("touch", _TOUCH), ("release", _RELEASE), ("claim", _CLAIM)):
            self._scripts[name] = self._client.register_script(script)

    async def aclose(self) -> None:
        self._retry.window = 0.0  # closing: a broker gone now is not waited for
        try:
            await self.stop_consuming()
            self._touch_on = False
            await _cancelled(self._touching)  # what it still holds is reclaimed later
            self._touching = None
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
            raw = message.raw_message
            delivery = _RedisDelivery(self, raw["channel"], raw["message_ids"][0])
            await hand_over(handler, body, delivery)

        self._consumer = consumer
        for agent in agents:
            stream = self.task_channel(agent)
            await self._ensure_group(stream)
            self._streams.append(stream)
            subscriber = self._broker.subscriber(
                stream=StreamSub(stream, group=self.group, consumer=consumer, max_records=prefetch),
                ack_policy=AckPolicy.MANUAL,
                no_reply=True,
                decoder=_raw_body,
            )
            subscriber(on_task)
            await subscriber.start()
            self._subscribers.append(subscriber)
        loop = asyncio.get_running_loop()
        self._claim_on = self._touch_on = True
        self._touching = loop.create_task(self._touch_held())
        self._claiming = loop.create_task(self._claim_idle(handler, prefetch))

    async def stop_consuming(self) -> None:
        subscribers, self._subscribers = self._subscribers, []
        for subscriber in subscribers:
            await subscriber.stop()
        claiming, self._claiming = self._claiming, None
        self._claim_on = False
        await _cancelled(claiming)
        if claiming is not None:
            await self._release_unheld()

    # -- redelivery ----------------------------------------------------------------------

    async def _run_script(self, name: str, stream: str, *args: Any) -> Any:
        async with self._slots:
            return await self._scripts[name](keys=[stream], args=[self.group, *args])

    async def _release(self, stream: str, entry: bytes) -> None:
        """Make ``entry`` (if this worker holds it) the next claim's, any worker's."""
        await self._run_script("release", stream, self._consumer, entry, RELEASED, RELEASED_IDLE_MS)

    async def _release_unheld(self) -> None:
        """Release what this consumer read but never handed to the worker (the subscriber's
        read-ahead), so another worker takes it now rather than after ``redeliver_after``."""
        held = {(delivery._stream, delivery._entry) for delivery in self._held}
        for stream in self._streams:
            try:
                pending = await self._client.xpending_range(
                    stream, self.group, "-", "+", 10_000, consumername=self._consumer
                )
                for entry in pending:
                    if (stream, entry["message_id"]) not in held:
                        await self._release(stream, entry["message_id"])
            except Exception:
                _log.warning("could not release the unstarted tasks of %s", stream, exc_info=True)

    async def _touch_held(self) -> None:
        """Keep every entry this consumer holds from looking idle, while it lives."""
        while self._touch_on:
            await asyncio.sleep(self.redeliver_after / 3)
            for stream in self._streams:
                try:
                    await self._run_script("touch", stream, self._consumer, 10_000)
                except Exception:
                    _log.warning("could not keep the tasks of %s claimed", stream, exc_info=True)

    async def _claim_idle(self, handler: TaskHandler, prefetch: int) -> None:
        """Take over entries idle for ``redeliver_after`` seconds, as room allows."""
        cursors = dict.fromkeys(self._streams, "0-0")
        idle_ms = max(1, int(self.redeliver_after * 1000))
        while self._claim_on:
            for stream in self._streams:
                try:
                    cursors[stream] = await self._claim_from(
                        stream, cursors[stream], idle_ms, handler, prefetch
                    )
                except Exception:
                    _log.warning("could not claim idle tasks of %s", stream, exc_info=True)
            await asyncio.sleep(min(CLAIM_EVERY, self.redeliver_after / 3))

    async def _claim_from(
        self, stream: str, cursor: str, idle_ms: int, handler: TaskHandler, prefetch: int
    ) -> str:
        """One sweep of ``stream``'s pending entries from ``cursor``; the cursor to go on
        from (``0-0``: swept to the end)."""
        parse = self._broker.message_format.parse
        while self._claim_on and (room := prefetch - len(self._held)) > 0:
            found, claimed = await self._run_script(
                "claim", stream, self._consumer, idle_ms, cursor, room
            )
            cursor = found.decode() if isinstance(found, bytes) else str(found)
            for entry, flat, deliveries in claimed:
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                body = parse(fields.get(bDATA_KEY, b""))[0]
                await hand_over(handler, body, _RedisDelivery(self, stream, entry, int(deliveries)))
            if cursor == "0-0":
                break
        return cursor

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        async with self._slots:
            await self._client.xadd(self.dead_channel(), {"letter": letter.to_json()})

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        entries = await self._client.xrevrange(self.dead_channel(), count=limit)
        return [_letter(entry) for entry in entries]

    async def replay_dead_letters(self, ids: Sequence[str] | None) -> list[DeadLetter]:
        stream = self.dead_channel()
        if ids is None:
            entries = await self._client.xrange(stream)
        else:
            entries = []
            for key in dict.fromkeys(ids):
                try:
                    entries += await self._client.xrange(stream, min=key, max=key)
                except ResponseError:
                    continue  # not a stream id: not in the store
            entries.sort(key=lambda entry: _entry_id(entry[0]))
        letters = [_letter(entry) for entry in entries]
        for letter, first in DeadLetter.first_copies(letters):
            if first:
                await self.publish_task(letter.agent, letter.data)
            await self._client.xdel(stream, letter.id)
        return letters

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


async def _cancelled(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait for it to end."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _entry_id(raw: bytes | str) -> tuple[int, ...]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    return tuple(int(part) for part in text.split("-"))


def _letter(entry: Any) -> DeadLetter:
    raw_id, fields = entry
    key = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
    return DeadLetter.from_json(fields.get(b"letter", fields.get("letter", b"")), key)
