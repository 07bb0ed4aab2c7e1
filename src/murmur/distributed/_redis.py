"""``redis://`` / ``rediss://``: Redis Streams through FastStream's ``RedisBroker``.

* Tasks: one stream per agent (``<namespace>.tasks.<agent>``), read by the consumer group
  ``<namespace>-workers``; each worker is a consumer of the group (competing consumers).
  The group is created at the start of the stream (id 0) by whichever side comes first,
  so tasks published before any worker started are not skipped. An entry is acknowledged
  (XACK) only once its result is published; until then it stays in the group's pending
  list. Once acknowledged it is deleted (XDEL, in the same round trip), so a task stream
  holds only the tasks not yet settled.
  A worker's consumer name is its name plus a suffix of its own (``<name>-xxxxxx``),
  so a worker restarted under the same name neither inherits nor keeps alive the entries
  its predecessor held: they go idle and are reclaimed.
* A lost group (its stream deleted, or a server restarted without persistence) is created
  again, at id 0, by the consuming workers, which go on serving; logged once per worker.
  FastStream stops a subscriber whose group is gone (NOGROUP): the claim loop, which
  notices the loss too, starts it again.
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
  persistence (an append-only file keeps the streams, groups and pending entries). The
  first command that succeeds after an outage tells the adapter's owner
  (``on_reconnect``): a reply stream read from its last id misses nothing the server kept,
  but a server that lost its data lost the replies in it too.
* Dead letters: the stream ``<namespace>.dead``, one entry (field ``letter``) each, its
  entry id the dead letter's id; a replay re-queues the entry and deletes it (XDEL).
* Unserved tasks: a sweep finds the namespace's task streams (SCAN) whose group has no
  consumer seen within ``redeliver_after`` (XINFO CONSUMERS), reads up to
  ``SWEEP_BATCH`` of their entries not yet delivered to the group (going on from there
  next time), and moves each one it picks to the dead letters in one script (XDEL, then
  XADD; the XDEL succeeds for one sweeper only, and not once the group has delivered it).
* Control: the pub/sub channel ``<namespace>.control``, subscribed to by every worker.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from faststream import AckPolicy
from faststream.message import StreamMessage
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.message import bDATA_KEY
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from .._cancellation import cancel_and_wait
from ._adapter import (
    DEFAULT_REPLAY_DEADLINE,
    NO_LOGGER,
    BrokerAdapter,
    ControlHandler,
    DeadLetter,
    Delivery,
    ReplyHandler,
    TaskHandler,
    UnservedLetter,
    replayable,
)
from ._faststream import hand_over
from ._faststream import raw_body as _raw_body
from ._group import GroupCommit
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
#: The field of a stream entry holding the message's bytes as they are (FastStream's
#: own publish wraps them in an envelope of headers, which nothing here reads).
BODY = b"m"
#: Entries a caller reads from its reply stream at once, at most.
BATCH_RECORDS = 1000
#: Most seconds between a consuming worker's claims of idle entries.
CLAIM_EVERY = 1.0
#: The pseudo-consumer a nacked entry is handed to, idle for ``RELEASED_IDLE_MS``: no
#: worker touches it, and the next claim takes it whatever its ``redeliver_after``.
RELEASED = "murmur-released"
RELEASED_IDLE_MS = 86_400_000
#: Entries of one unserved stream a sweep reads, at most (the next goes on from there).
SWEEP_BATCH = 1000
#: What a SCAN pattern reads as wildcards (escaped in a namespace matched literally).
_GLOB = frozenset("*?[]\\")

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
#: Move the entry ARGV[2] of KEYS[1], unless the group ARGV[1] has delivered it, to the
#: dead-letter stream KEYS[2] (field ``letter`` ARGV[3]); its dead-letter id, or false if
#: it is gone (another sweeper took it) or delivered.
_SWEEP = """
local function parts(id)
    local ms, seq = string.match(id, '(%d+)-(%d+)')
    return tonumber(ms), tonumber(seq)
end
local ms, seq = parts(ARGV[2])
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local fields = {}
    for i = 1, #group, 2 do fields[group[i]] = group[i + 1] end
    if fields['name'] == ARGV[1] then
        local last_ms, last_seq = parts(fields['last-delivered-id'])
        if ms < last_ms or (ms == last_ms and seq <= last_seq) then return false end
    end
end
if redis.call('XDEL', KEYS[1], ARGV[2]) == 0 then return false end
return redis.call('XADD', KEYS[2], '*', 'letter', ARGV[3])
"""
#: Send results and acknowledge their tasks, in one round trip, in that order: for each
#: of the ARGV[1] results, XADD to KEYS[i] (capped at ARGV[2] entries) the body ARGV[4 + i]
#: and expire the stream in ARGV[3] s; then, per task stream KEYS[k] after those, XACK
#: and XDEL (group ARGV[4]) the next ARGV count and that many ids. A failed XADD (out of
#: memory) stops the script before any acknowledgement.
_SETTLE = """
local n = tonumber(ARGV[1])
for i = 1, n do
    redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[2], '*', 'm', ARGV[4 + i])
end
for i = 1, n do
    redis.call('EXPIRE', KEYS[i], ARGV[3])
end
local at = 5 + n
for k = n + 1, #KEYS do
    local count = tonumber(ARGV[at])
    local ids = {unpack(ARGV, at + 1, at + count)}
    redis.call('XACK', KEYS[k], ARGV[4], unpack(ids))
    redis.call('XDEL', KEYS[k], unpack(ids))
    at = at + count + 1
end
return n
"""


class _Reconnecting(Retry):
    """redis-py's retry policy for every connection of one adapter: a command that fails
    on its connection (ConnectionError, TimeoutError) reconnects and runs again, backing
    off, for up to ``window`` seconds; the outage is logged once.

    ``window`` is 0 until the adapter has connected: an unreachable broker fails
    ``connect`` at once. One instance is shared by the pool's connections (redis-py copies
    a policy into each connection; this one is not copied)."""

    def __init__(self, outage: OutageLog, reconnected: Callable[[], None]) -> None:
        super().__init__(NoBackoff(), 0)
        self.window = 0.0
        self.outage = outage
        self.reconnected = reconnected

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
                if loop.time() >= give_up or self.window <= 0:
                    # Out of time, or the adapter is closing (its own reads end with
                    # their connections: no outage to report).
                    raise
                self.outage.lost(error)
                await asyncio.sleep(backoff(failures))
            else:
                if self.outage.down:
                    self.outage.back()
                    self.reconnected()
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
        await adapter._acks.write((self._stream, self._entry))

    async def nack(self) -> None:
        self._adapter._held.discard(self)
        await self._adapter._release(self._stream, self._entry)


class RedisAdapter(BrokerAdapter):
    """Redis Streams with a consumer group per namespace."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._retry = _Reconnecting(OutageLog(self.url.redacted), self._tell_reconnected)
        self._broker = RedisBroker(
            self.url.secret,
            logger=NO_LOGGER,
            max_connections=_MAX_CONNECTIONS,
            retry=self._retry,
            # The handlers take their one argument as decoded (a batch, or bytes): no
            # dependency injection, nor validation of it, for every batch.
            apply_types=False,
        )
        self._slots = asyncio.Semaphore(COMMAND_SLOTS)
        self._client: Any = None
        self._groups: set[str] = set()
        #: The task subscribers, by stream.
        self._subscribers: dict[str, Any] = {}
        #: Streams whose lost group is logged and not yet seen served again (a loss is
        #: logged once, though noticed by the claim loop and the subscriber alike).
        self._regrouped: set[str] = set()
        self._replies: Any = None
        self._reply_stream: str | None = None
        #: The consumer's streams and name in the group (set by ``consume``).
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
        # Writes made together go together: one pipeline (one round trip) per batch.
        self._tasks: GroupCommit[tuple[str, bytes]] = GroupCommit(self._publish_tasks)
        self._replies_out: GroupCommit[tuple[str, bytes]] = GroupCommit(self._publish_replies)
        self._acks: GroupCommit[tuple[str, bytes]] = GroupCommit(self._ack_entries)
        self._settles: GroupCommit[tuple[str, bytes, str, bytes]] = GroupCommit(self._settle_batch)
        #: Per unserved stream, the last entry a sweep read (the next goes on from there).
        self._swept: dict[str, str] = {}

    @property
    def group(self) -> str:
        return f"{self.namespace}-workers"

    async def connect(self) -> None:
        await self._broker.start()
        self._client = await self._broker.connect()
        await self._client.ping()  # the client connects lazily: fail here, not mid-consume
        self._retry.window = RECONNECT_SECONDS
        scripts = (
            ("touch", _TOUCH),
            ("release", _RELEASE),
            ("claim", _CLAIM),
            ("sweep", _SWEEP),
            ("settle", _SETTLE),
        )
        for name, script in scripts:
            self._scripts[name] = self._client.register_script(script)

    async def aclose(self) -> None:
        self._retry.window = 0.0  # closing: a broker gone now is not waited for
        try:
            await self.stop_consuming()
            self._touch_on = False
            await cancel_and_wait(self._touching)  # what it still holds is reclaimed later
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
        await self._create_group(stream)
        self._groups.add(stream)

    async def _create_group(self, stream: str) -> bool:
        """Create the group on ``stream`` (and the stream) at id 0; False if it exists."""
        try:
            await self._client.xgroup_create(stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    async def publish_task(self, agent: str, data: bytes) -> None:
        await self._tasks.write((self.task_channel(agent), data))

    async def _publish_tasks(self, tasks: Sequence[tuple[str, bytes]]) -> None:
        async with self._slots:
            for stream in {stream for stream, _ in tasks} - self._groups:
                await self._ensure_group(stream)
            async with self._client.pipeline(transaction=False) as pipe:
                for stream, data in tasks:
                    pipe.execute_command("XADD", stream, "*", BODY, data)  # xadd(), cheaper
                await pipe.execute()

    async def open_replies(self, caller: str, handler: ReplyHandler) -> str:
        stream = self.reply_channel(caller)

        async def on_replies(batch: _Batch) -> None:
            for data in _bodies(batch.raw, self._broker.message_format):
                handler(data)

        subscriber = self._broker.subscriber(
            stream=StreamSub(stream, last_id="0-0", batch=True, max_records=BATCH_RECORDS),
            no_reply=True,
            parser=_unparsed,
            decoder=_raw_batch,
        )
        subscriber(on_replies)
        await subscriber.start()
        self._replies, self._reply_stream = subscriber, stream
        return stream

    async def publish_reply(self, address: str, data: bytes) -> None:
        await self._replies_out.write((address, data))

    async def _publish_replies(self, replies: Sequence[tuple[str, bytes]]) -> None:
        async with self._slots, self._client.pipeline(transaction=False) as pipe:
            # One round trip: the replies, a cap on each stream's length, and an expiry, so
            # a reply that arrives after its caller closed (and deleted the stream) does
            # not leave the stream behind for good.
            for address, data in replies:
                pipe.xadd(address, {BODY: data}, maxlen=REPLY_MAXLEN, approximate=True)
            for address in {address for address, _ in replies}:
                pipe.expire(address, REPLY_TTL_SECONDS)
            await pipe.execute()

    async def settle(self, address: str, data: bytes, delivery: Delivery) -> None:
        if not isinstance(delivery, _RedisDelivery) or delivery._adapter is not self:
            await super().settle(address, data, delivery)
            return
        await self._settles.write((address, data, delivery._stream, delivery._entry))
        # Held until then: a settle that failed is tried again (the worker still has the
        # result to send), and a stop meanwhile must not hand the task to another worker.
        self._held.discard(delivery)

    async def _settle_batch(self, batch: Sequence[tuple[str, bytes, str, bytes]]) -> None:
        """The results of ``batch`` sent, then its tasks acknowledged: one script call."""
        entries = _by_stream((stream, entry) for _, _, stream, entry in batch)
        keys: list[str] = [address for address, _, _, _ in batch]
        args: list[Any] = [len(batch), REPLY_MAXLEN, REPLY_TTL_SECONDS, self.group]
        args += [data for _, data, _, _ in batch]
        for stream, ids in entries.items():
            keys.append(stream)
            args.append(len(ids))
            args += ids
        async with self._slots:
            await self._scripts["settle"](keys=keys, args=args)

    async def _ack_entries(self, entries: Sequence[tuple[str, bytes]]) -> None:
        async with self._slots, self._client.pipeline(transaction=False) as pipe:
            for stream, ids in _by_stream(entries).items():
                pipe.xack(stream, self.group, *ids)
                # Settled for good: deleted, or the stream would keep every task forever.
                pipe.xdel(stream, *ids)
            await pipe.execute()

    async def consume(
        self, agents: Sequence[str], handler: TaskHandler, *, prefetch: int, consumer: str
    ) -> None:
        message_format = self._broker.message_format

        async def on_tasks(batch: _Batch) -> None:
            raw = batch.raw
            stream = raw["channel"]
            for entry, data in zip(raw["message_ids"], _bodies(raw, message_format), strict=True):
                await hand_over(handler, data, _RedisDelivery(self, stream, entry))

        # This process's own consumer: one restarted under the same name must not take
        # over its predecessor's pending entries (it would touch them for good, and never
        # read them: XREADGROUP gives a consumer only new entries).
        self._consumer = consumer = f"{consumer}-{uuid.uuid4().hex[:6]}"
        for agent in agents:
            stream = self.task_channel(agent)
            await self._ensure_group(stream)
            self._streams.append(stream)
            subscriber = self._broker.subscriber(
                stream=StreamSub(
                    stream, group=self.group, consumer=consumer, batch=True, max_records=prefetch
                ),
                ack_policy=AckPolicy.MANUAL,
                no_reply=True,
                parser=_unparsed,
                decoder=_raw_batch,
            )
            subscriber(on_tasks)
            await subscriber.start()
            self._subscribers[stream] = subscriber
        loop = asyncio.get_running_loop()
        self._claim_on = self._touch_on = True
        self._touching = loop.create_task(self._touch_held())
        self._claiming = loop.create_task(self._claim_idle(handler, prefetch))

    async def stop_consuming(self) -> None:
        # The claim loop first: it may start a subscriber again (a lost group).
        claiming, self._claiming = self._claiming, None
        self._claim_on = False
        await cancel_and_wait(claiming)
        subscribers, self._subscribers = self._subscribers, {}
        for subscriber in subscribers.values():
            await subscriber.stop()
        if claiming is not None:
            await self._release_unheld()

    # -- redelivery ----------------------------------------------------------------------

    async def _run_script(
        self, name: str, stream: str, *args: Any, extra: Sequence[str] = ()
    ) -> Any:
        async with self._slots:
            return await self._scripts[name](keys=[stream, *extra], args=[self.group, *args])

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
                except ResponseError as exc:
                    if not _no_group(exc):  # lost: nothing held (the claim loop recreates it)
                        _log.warning("could not keep the tasks of %s claimed: %s", stream, exc)
                except Exception:
                    _log.warning("could not keep the tasks of %s claimed", stream, exc_info=True)

    async def _claim_idle(self, handler: TaskHandler, prefetch: int) -> None:
        """Take over entries idle for ``redeliver_after`` seconds, as room allows."""
        cursors = dict.fromkeys(self._streams, "0-0")
        idle_ms = max(1, int(self.redeliver_after * 1000))
        while self._claim_on:
            for stream in self._streams:
                lost = False
                try:
                    cursors[stream] = await self._claim_from(
                        stream, cursors[stream], idle_ms, handler, prefetch
                    )
                except ResponseError as exc:
                    lost = _no_group(exc)
                    if not lost:
                        _log.warning("could not claim idle tasks of %s: %s", stream, exc)
                except Exception:
                    _log.warning("could not claim idle tasks of %s", stream, exc_info=True)
                try:
                    await self._keep_group(stream, lost)
                except Exception:
                    _log.warning("could not recreate the group of %s", stream, exc_info=True)
            await asyncio.sleep(min(CLAIM_EVERY, self.redeliver_after / 3))

    async def _keep_group(self, stream: str, lost: bool) -> None:
        """If ``stream``'s group is gone (``lost``: a claim found no group; or FastStream
        stopped its subscriber, which it does on NOGROUP and never undoes), create it
        again at id 0, so the tasks published since the loss are read, and start the
        subscriber again; logged once per loss."""
        subscriber = self._subscribers.get(stream)
        stopped = subscriber is not None and not subscriber.running
        if not (lost or stopped):
            self._regrouped.discard(stream)  # served again: a later loss is a new one
            return
        created = await self._create_group(stream)
        if stopped and self._claim_on and subscriber is not None:
            await subscriber.start()
        if stream not in self._regrouped:
            self._regrouped.add(stream)
            _log.warning(
                "the consumer group %s of %s was gone (the stream deleted, or the server "
                "restarted without persistence): %s at the start of the stream; serving "
                "again (tasks queued before the loss went with it: their callers' deadlines "
                "report them)",
                self.group,
                stream,
                "created again" if created else "found created again",
            )

    async def _claim_from(
        self, stream: str, cursor: str, idle_ms: int, handler: TaskHandler, prefetch: int
    ) -> str:
        """One sweep of ``stream``'s pending entries from ``cursor``; the cursor to go on
        from (``0-0``: swept to the end)."""
        message_format = self._broker.message_format
        while self._claim_on and (room := prefetch - len(self._held)) > 0:
            found, claimed = await self._run_script(
                "claim", stream, self._consumer, idle_ms, cursor, room
            )
            cursor = found.decode() if isinstance(found, bytes) else str(found)
            for entry, flat, deliveries in claimed:
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                body = _body(fields, message_format)
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

    async def replay_dead_letters(
        self, ids: Sequence[str] | None, *, deadline_in: float = DEFAULT_REPLAY_DEADLINE
    ) -> list[DeadLetter]:
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
                await self.publish_task(letter.agent, replayable(letter.data, deadline_in))
            await self._client.xdel(stream, letter.id)
        return letters

    # -- unserved tasks ------------------------------------------------------------------

    async def sweep_unserved(
        self, served: Sequence[str], letter: UnservedLetter
    ) -> list[DeadLetter]:
        mine = {self.task_channel(agent) for agent in served}
        pattern = _glob_escaped(f"{self.namespace}.tasks.") + "*"
        swept: list[DeadLetter] = []
        async for key in self._client.scan_iter(match=pattern, _type="stream", count=1000):
            stream = _text(key)
            if stream not in mine:
                swept += await self._sweep(stream, letter)
        return swept

    async def _sweep(self, stream: str, letter: UnservedLetter) -> list[DeadLetter]:
        """Dead-letter what ``letter`` picks among the next undelivered entries of
        ``stream``, if no live worker consumes it."""
        try:
            async with self._slots:
                consumers = await self._client.xinfo_consumers(stream, self.group)
                groups = await self._client.xinfo_groups(stream)
        except ResponseError:
            return []  # no group: not a stream of this namespace's workers
        live_ms = self.redeliver_after * 1000
        if any(_text(c["name"]) != RELEASED and c["idle"] < live_ms for c in consumers):
            return []
        delivered = [
            _text(g["last-delivered-id"]) for g in groups if _text(g["name"]) == self.group
        ]
        if not delivered:
            return []
        start = max(delivered[0], self._swept.get(stream, "0-0"), key=_entry_id)
        async with self._slots:
            entries = await self._client.xrange(stream, min=f"({start}", count=SWEEP_BATCH)
        if len(entries) < SWEEP_BATCH:
            self._swept.pop(stream, None)  # read to the end: from the start next time
        else:
            self._swept[stream] = _text(entries[-1][0])
        agent = self.agent_of(stream)
        message_format = self._broker.message_format
        swept: list[DeadLetter] = []
        for entry, fields in entries:
            made = letter(_body(fields, message_format), agent, 0)
            if made is None:
                continue
            key = await self._run_script(
                "sweep", stream, entry, made.to_json(), extra=[self.dead_channel()]
            )
            if key:
                swept.append(made.stored_as(_text(key)))
        return swept

    async def delete_namespace(self, agents: Sequence[str]) -> None:
        # Every stream of the namespace: tasks (with their group), dead letters, replies.
        pattern = "".join(f"\\{c}" if c in _GLOB else c for c in self.namespace) + ".*"
        keys = [key async for key in self._client.scan_iter(match=pattern)]
        if keys:
            await self._client.delete(*keys)

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


async def _unparsed(raw: Any, original: Any = None) -> StreamMessage[Any]:
    """FastStream's parser of a batch, replaced: the entries are read by ``_bodies`` (its
    own would decode every body as JSON and encode the list again)."""
    return StreamMessage(raw_message=raw, body=b"", correlation_id="-")


def _by_stream(entries: Iterable[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    """Entry ids grouped by their stream, in order (one XACK / XDEL per stream)."""
    by_stream: dict[str, list[bytes]] = {}
    for stream, entry in entries:
        by_stream.setdefault(stream, []).append(entry)
    return by_stream


class _Batch:
    """A batch of stream entries as read (``raw``), handed to a handler as its one
    argument: a handler that asked FastStream for the message object instead (a
    ``Context`` parameter) would pay a thread hop per batch, FastStream resolving it."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw


async def _raw_batch(message: Any, original: Any = None) -> _Batch:
    """FastStream's decoder of a batch, replaced: the batch as read, untouched."""
    return _Batch(message.raw_message)


def _bodies(raw: Any, message_format: Any) -> list[bytes]:
    """The message bodies of a batch of stream entries, as they were published."""
    return [_body(fields, message_format) for fields in raw["data"]]


def _body(fields: dict[bytes, bytes], message_format: Any) -> bytes:
    """The message body of one stream entry: its ``BODY`` field, or (an entry published
    through FastStream, as Murmur did before) FastStream's envelope, unwrapped."""
    body = fields.get(BODY)
    if body is None:
        body = message_format.parse(fields.get(bDATA_KEY, b""))[0]
    return body


def _no_group(exc: ResponseError) -> bool:
    """The error of a command (or script) on a stream with no such group, or no stream."""
    return str(exc).startswith("NOGROUP")


def _entry_id(raw: bytes | str) -> tuple[int, ...]:
    return tuple(int(part) for part in _text(raw).split("-"))


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _glob_escaped(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern (SCAN MATCH)."""
    return "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in text)


def _letter(entry: Any) -> DeadLetter:
    raw_id, fields = entry
    key = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
    return DeadLetter.from_json(fields.get(b"letter", fields.get("letter", b"")), key)
