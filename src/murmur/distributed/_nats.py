"""``nats://`` / ``tls://``: NATS JetStream through FastStream's ``NatsBroker``.

* Tasks: one JetStream stream per namespace (``<namespace>-tasks``, sanitised, holding
  the subjects ``<namespace>.tasks.>``) with work-queue retention: a message stays until
  a worker acknowledges it. Whichever side connects first creates the stream, so tasks
  published before any worker started wait in it. Each agent has one durable pull
  consumer (named after the agent, filtered on its subject, delivering from the start)
  that every worker shares: competing consumers. The worker pulls with nats-py itself
  (FastStream's pull subscriber fetches a fixed batch, and a batch pull waits for the
  whole batch or its timeout): one message at a time while idle (answered as soon as one
  is stored), and while tasks come, as many as it has free slots for in one no-wait pull
  (a pull that finds fewer waits ``BUSY_PULL_TIMEOUT`` for the rest, then the worker goes
  back to one at a time). It never holds more tasks than its slots.
* A message is acknowledged only once its result is published; until then the worker
  tells the server it is still working on it (every third of the consumer's ack wait; a
  signal that fails is retried at the next), so a long task is not handed to another
  worker, while a dead worker's messages come back after the ack wait:
  ``redeliver_after`` seconds for the consumers a worker creates (an existing consumer
  keeps its own; the worker's signals follow the consumer's).
  ``nack`` makes the message deliverable again at once.
* A delivered message's count of deliveries is JetStream's own (``num_delivered``).
* Replies: core NATS, subject ``<namespace>.reply.<caller>`` (nothing stored: the caller
  listens before it publishes its first task), read with a plain nats-py subscription.
* Dead letters: the JetStream stream ``<namespace>-dead`` (sanitised, limits retention,
  subject ``<namespace>.dead``), created with the task stream; a dead letter's id is its
  stream sequence number, and a replay re-queues it and deletes that message.
* Unserved tasks: a sweep lists the task stream's subjects (``stream_info`` with a
  subjects filter) and, for each agent whose consumer is missing, or has no pull request
  waiting and no message unacknowledged, reads up to ``SWEEP_BATCH`` of its messages
  (``next_by_subj``, going on from there next time). One it picks is stored as a dead
  letter under a message id naming its stream sequence (the dead-letter stream drops a
  second copy from another sweeper within its duplicate window), then deleted from the
  task stream; only the sweeper whose copy was stored reports it.
* Outages: nats-py reconnects without end (``RECONNECT_WAIT`` apart), resubscribes, and
  sends what was published meanwhile once it is back; the outage is logged. A task
  published while the server is gone is published again until it is stored (for up to
  ``RECONNECT_SECONDS``). A reply is not stored: one sent while its caller is not
  connected is lost; once nats-py has subscribed again, the adapter says it is back
  (``on_reconnect``) and its caller asks the workers for the results again.
* Control: core NATS, subject ``<namespace>.control``, subscribed to by every worker (no
  queue group: each hears every message).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from faststream.nats import NatsBroker
from nats.errors import ConnectionReconnectingError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import (
    AckPolicy as JsAckPolicy,
)
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    APIError,
    BadRequestError,
    NotFoundError,
    ServiceUnavailableError,
)

from ._adapter import (
    DEFAULT_REPLAY_DEADLINE,
    NO_LOGGER,
    BrokerAdapter,
    ControlHandler,
    DeadLetter,
    ReplyHandler,
    TaskHandler,
    UnservedLetter,
    replayable,
    safe_name,
)
from ._faststream import hand_over, raw_body
from ._outage import RECONNECT_SECONDS, OutageLog, backoff

__all__ = ["PROGRESS_SHARE", "NatsAdapter"]

_log = logging.getLogger("murmur.distributed")

#: A worker's "still working on it" signals for each task it holds come this share of
#: the consumer's ack wait apart (the ack wait: how long a dead worker's tasks wait).
PROGRESS_SHARE = 1 / 3
#: Seconds one pull request waits on the server (a task arriving meanwhile is answered
#: at once); the subscriber then asks again.
PULL_TIMEOUT = 5.0
#: Seconds a pull for several tasks, made while tasks come, waits for more than the
#: server has at once (then the worker pulls one at a time again).
BUSY_PULL_TIMEOUT = 0.05
#: Seconds a task's publish waits for the server to say it stored it, before publishing it
#: again (a server restarting answers none of those sent meanwhile).
PUBLISH_TIMEOUT = 0.5
#: JetStream's error code for "stream name already in use with a different configuration".
_STREAM_EXISTS = 10058
#: JetStream's "subjects overlap with an existing stream".
_SUBJECTS_OVERLAP = 10065
#: Tries at creating a stream whose subjects a concurrent creation holds, and the first wait.
_CREATE_ATTEMPTS = 5
_CREATE_BACKOFF = 0.05
#: Seconds between two attempts to reach a server that went away.
RECONNECT_WAIT = 1
#: Messages of one unserved subject a sweep reads, at most (the next goes on from there).
SWEEP_BATCH = 1000
#: A JetStream publish that fails with these did not reach a server that could store it.
_NOT_STORED = (
    NatsTimeoutError,
    NoRespondersError,
    ConnectionReconnectingError,
    ServiceUnavailableError,
    TimeoutError,
)


class _NatsDelivery:
    __slots__ = ("_adapter", "_message", "deliveries")

    def __init__(self, adapter: NatsAdapter, message: Any) -> None:
        self._adapter = adapter
        #: nats-py's message.
        self._message = message
        #: How many times delivered (see ``Delivery.deliveries``): JetStream counts them.
        self.deliveries = _num_delivered(message)
        adapter._held.add(self)

    @property
    def channel(self) -> str:
        subject: str = self._message.subject
        return subject

    def _settled(self) -> None:
        self._adapter._held.discard(self)
        self._adapter._room.set()

    async def ack(self) -> None:
        self._settled()
        await self._message.ack()

    async def nack(self) -> None:
        self._settled()
        await self._message.nak()


class _FirstConnection:
    """nats-py's error callback, which ends the first connection attempt once every server
    has failed once.

    nats-py retries a server it cannot reach ``max_reconnect_attempts`` times,
    ``reconnect_time_wait`` apart (two minutes by default), before its first connection
    fails: an unreachable server would fail only at the connect timeout, with no cause.
    An error raised by the callback ends the attempt (FastStream's own callback does this
    for errors no retry can fix). Once connected, errors are left to nats-py's reconnection.
    """

    __slots__ = ("left", "made")

    def __init__(self, servers: int) -> None:
        self.left = servers
        self.made = False

    async def __call__(self, error: Exception) -> None:
        if self.made:
            return
        self.left -= 1
        if self.left <= 0:
            raise error


class NatsAdapter(BrokerAdapter):
    """A JetStream work-queue stream per namespace, a shared pull consumer per agent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        servers = _servers(self.url.secret, self.url.hosts)
        self._first_connection = _FirstConnection(len(servers))
        self._outage = OutageLog(self.url.redacted)
        self._broker = NatsBroker(
            servers,
            error_cb=self._first_connection,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            max_reconnect_attempts=-1,  # once connected, a worker never gives up
            reconnect_time_wait=RECONNECT_WAIT,
            logger=NO_LOGGER,
        )
        self._client: Any = None
        self._jetstream: Any = None
        self._replies: Any = None
        self._control: Any = None
        self._held: set[_NatsDelivery] = set()
        #: Set when a held message is settled (a puller waiting for room goes on).
        self._room = asyncio.Event()
        self._pulling: list[asyncio.Task[None]] = []
        self._subscriptions: list[Any] = []
        self._keeping: asyncio.Task[None] | None = None
        self._progress_every = self.redeliver_after * PROGRESS_SHARE
        self._closing = False
        #: Per unserved subject, the last stream sequence a sweep read.
        self._swept: dict[str, int] = {}

    @property
    def stream(self) -> str:
        """The JetStream stream holding this namespace's tasks."""
        return f"{safe_name(self.namespace)}-tasks"

    @property
    def dead_stream(self) -> str:
        """The JetStream stream holding this namespace's dead letters."""
        return f"{safe_name(self.namespace)}-dead"

    def consumer_name(self, agent: str) -> str:
        """The durable consumer all workers of ``agent`` share (unique within the stream)."""
        return safe_name(agent)

    async def connect(self) -> None:
        await self._broker.start()
        self._client = await self._broker.connect()
        self._jetstream = self._client.jetstream()
        self._first_connection.made = True
        await self._ensure_stream()

    async def _disconnected(self) -> None:
        if self._first_connection.made and not self._closing:
            self._outage.lost(ConnectionError("disconnected"))

    async def _reconnected(self) -> None:
        # nats-py calls this once it has subscribed again and the server has answered a
        # ping since: a reply sent from now on reaches this adapter.
        self._outage.back()
        if not self._closing:
            self._tell_reconnected()

    async def _ensure_stream(self) -> None:
        tasks = StreamConfig(
            name=self.stream,
            subjects=[f"{self.namespace}.tasks.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
        )
        dead = StreamConfig(
            name=self.dead_stream,
            subjects=[self.dead_channel()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
        )
        for config in (tasks, dead):
            for attempt in range(_CREATE_ATTEMPTS):
                try:
                    await self._client.jetstream().add_stream(config)  # same config: a no-op
                except BadRequestError as exc:
                    if exc.err_code == _STREAM_EXISTS:
                        break  # created by someone with other settings (an operator's): used
                    if exc.err_code != _SUBJECTS_OVERLAP or attempt == _CREATE_ATTEMPTS - 1:
                        raise
                    # Two processes creating the same stream at once: the server may tell
                    # the second its subjects overlap the stream being created (not yet
                    # known by name). Asked again, it is there; another stream holding
                    # these subjects for good still fails, after a few tries.
                    await asyncio.sleep(_CREATE_BACKOFF * 2**attempt)
                else:
                    break

    async def aclose(self) -> None:
        self._closing = True
        try:
            await self.stop_consuming()
            replies, self._replies = self._replies, None
            if replies is not None:
                with contextlib.suppress(Exception):
                    await replies.unsubscribe()
            control, self._control = self._control, None
            if control is not None:
                await control.stop()
            keeping, self._keeping = self._keeping, None
            if keeping is not None:
                keeping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeping
            self._held.clear()  # unsettled: redelivered after the ack wait
        finally:
            try:
                await self._broker.stop()
            finally:
                # FastStream's stop drains the connection, which fails while nats-py is
                # reconnecting, and leaves it reconnecting for good: closed here.
                client = self._client
                if client is not None and not client.is_closed:
                    try:
                        await client.close()
                    except Exception:
                        # nats-py fails writing what it buffered while the server was
                        # gone before it stops its subscriptions' tasks: stopped here.
                        for subscription in list(client._subs.values()):
                            subscription._stop_processing()
                        raise

    async def publish_task(self, agent: str, data: bytes) -> None:
        # Through JetStream: returns once the stream has stored it. If the server does not
        # answer (gone, restarting), published again: at worst stored twice, run twice,
        # and its caller keeps the first result.
        loop = asyncio.get_running_loop()
        give_up = loop.time() + RECONNECT_SECONDS
        failures = 0
        jetstream = self._jetstream
        while True:
            try:
                await jetstream.publish(
                    self.task_channel(agent), data, stream=self.stream, timeout=PUBLISH_TIMEOUT
                )
            except _NOT_STORED as exc:
                failures += 1
                if loop.time() >= give_up:
                    raise
                self._outage.lost(exc)
                await asyncio.sleep(backoff(failures))
            else:
                return

    async def open_replies(self, caller: str, handler: ReplyHandler) -> str:
        subject = self.reply_channel(caller)

        async def on_reply(message: Any) -> None:
            handler(message.data)

        # nats-py's own subscription: a reply is handed over as it comes, with none of a
        # FastStream subscriber's work per message (nothing to decode, ack or answer).
        self._replies = await self._client.subscribe(subject, cb=on_reply, pending_msgs_limit=-1)
        await self._client.flush()  # subscribed on the server before the first task goes
        return subject

    async def publish_reply(self, address: str, data: bytes) -> None:
        await self._client.publish(address, data)

    async def consume(
        self, agents: Sequence[str], handler: TaskHandler, *, prefetch: int, consumer: str
    ) -> None:
        jetstream = self._client.jetstream()
        loop = asyncio.get_running_loop()
        for agent in agents:
            durable = self.consumer_name(agent)
            subscription = await jetstream.pull_subscribe(
                self.task_channel(agent),
                durable=durable,
                stream=self.stream,
                config=ConsumerConfig(
                    durable_name=durable,
                    ack_policy=JsAckPolicy.EXPLICIT,
                    ack_wait=self.redeliver_after,
                    deliver_policy=DeliverPolicy.ALL,
                ),
            )
            self._subscriptions.append(subscription)
            self._pulling.append(loop.create_task(self._pull(subscription, handler, prefetch)))
            # A consumer another worker created keeps its ack wait: signal within it.
            info = await jetstream.consumer_info(self.stream, durable)
            ack_wait = info.config.ack_wait or self.redeliver_after
            self._progress_every = min(self._progress_every, ack_wait * PROGRESS_SHARE)
        if self._keeping is None:
            self._keeping = loop.create_task(self._keep_alive())

    async def _pull(self, subscription: Any, handler: TaskHandler, prefetch: int) -> None:
        """Pull tasks while there is room: when idle, one at a time (a lone task is
        answered as soon as it is stored); while tasks come, as many as there is room for
        in one request (JetStream's no-wait pull answers at once with what it has)."""
        busy = False
        while True:
            room = prefetch - len(self._held)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                if busy and room > 1:
                    messages = await subscription.fetch(room, timeout=BUSY_PULL_TIMEOUT)
                else:
                    messages = await subscription.fetch(1, timeout=PULL_TIMEOUT)
            except (TimeoutError, NatsTimeoutError):
                busy = False
                continue
            except Exception as exc:
                # Disconnected (nats-py reconnects) or the consumer is gone: again soon.
                busy = False
                self._outage.lost(exc)
                await asyncio.sleep(RECONNECT_WAIT)
                continue
            busy = True
            for message in messages:
                await hand_over(handler, message.data, _NatsDelivery(self, message))

    async def _keep_alive(self) -> None:
        """Tell the server, for each task this worker holds, that it is still working on
        it (every third of the ack wait), so a long task is not handed to another worker.
        A signal that fails (a connection blip) is sent again on the next round."""
        failing = False
        while True:
            await asyncio.sleep(self._progress_every)
            failed = False
            for delivery in list(self._held):
                try:
                    await delivery._message.in_progress()
                except Exception as exc:
                    # Once per run of failures, not every round; an outage is logged
                    # already. If the connection stays down, the server redelivers the
                    # task after the ack wait anyway.
                    if not failing and not failed and not self._outage.down:
                        _log.warning(
                            "could not report progress on a task from %s (%s: %s): retrying",
                            delivery.channel,
                            type(exc).__name__,
                            exc,
                        )
                    failed = True
            failing = failed

    async def stop_consuming(self) -> None:
        pulling, self._pulling = self._pulling, []
        for task in pulling:
            task.cancel()
        for task in pulling:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            with contextlib.suppress(Exception):  # the connection is gone: so is it
                await subscription.unsubscribe()

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        await self._client.jetstream().publish(
            self.dead_channel(), letter.to_json(), stream=self.dead_stream
        )

    async def _stored(self, seqs: Sequence[int], limit: int) -> list[DeadLetter]:
        """The dead letters at ``seqs`` (in that order), at most ``limit``; deleted
        sequence numbers skipped."""
        jetstream = self._client.jetstream()
        letters: list[DeadLetter] = []
        for seq in seqs:
            if len(letters) >= limit:
                break
            try:
                message = await jetstream.get_msg(self.dead_stream, seq)
            except NotFoundError:
                continue
            letters.append(DeadLetter.from_json(message.data or b"", str(seq)))
        return letters

    async def _range(self) -> range:
        """The dead-letter stream's sequence numbers, first to last (some deleted)."""
        try:
            info = await self._client.jetstream().stream_info(self.dead_stream)
        except NotFoundError:
            return range(0)
        state = info.state
        if not state.messages:
            return range(0)
        return range(state.first_seq, state.last_seq + 1)

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        return await self._stored((await self._range())[::-1], limit)

    async def replay_dead_letters(
        self, ids: Sequence[str] | None, *, deadline_in: float = DEFAULT_REPLAY_DEADLINE
    ) -> list[DeadLetter]:
        stored = await self._range()
        if ids is None:
            seqs: Sequence[int] = stored
        else:
            wanted = {int(key) for key in ids if key.isdigit()}
            seqs = sorted(seq for seq in wanted if seq in stored)
        letters = await self._stored(seqs, len(seqs))
        jetstream = self._client.jetstream()
        for letter, first in DeadLetter.first_copies(letters):
            if first:
                await self.publish_task(letter.agent, replayable(letter.data, deadline_in))
            await jetstream.delete_msg(self.dead_stream, int(letter.id))
        return letters

    async def sweep_unserved(
        self, served: Sequence[str], letter: UnservedLetter
    ) -> list[DeadLetter]:
        jetstream = self._client.jetstream()
        try:
            info = await jetstream.stream_info(
                self.stream, subjects_filter=f"{self.namespace}.tasks.>"
            )
        except NotFoundError:
            return []
        mine = {self.task_channel(agent) for agent in served}
        swept: list[DeadLetter] = []
        for subject, count in (info.state.subjects or {}).items():
            if subject in mine or not count:
                continue
            agent = self.agent_of(subject)
            try:
                consumer = await jetstream.consumer_info(self.stream, self.consumer_name(agent))
            except NotFoundError:
                consumer = None
            if consumer is not None and (consumer.num_waiting or consumer.num_ack_pending):
                continue  # a worker is waiting for its tasks, or holds some
            swept += await self._sweep(subject, agent, letter)
        return swept

    async def _sweep(self, subject: str, agent: str, letter: UnservedLetter) -> list[DeadLetter]:
        """Dead-letter what ``letter`` picks among the next messages of ``subject``."""
        jetstream = self._client.jetstream()
        swept: list[DeadLetter] = []
        for _ in range(SWEEP_BATCH):
            seq = self._swept.get(subject, 0) + 1
            try:
                message = await jetstream.get_msg(self.stream, seq, subject=subject, next=True)
            except NotFoundError:
                self._swept.pop(subject, None)  # read to the end: from the start next time
                break
            self._swept[subject] = message.seq
            made = letter(message.data or b"", agent, 0)
            if made is None:
                continue
            stored = await jetstream.publish(
                self.dead_channel(),
                made.to_json(),
                stream=self.dead_stream,
                headers={"Nats-Msg-Id": f"unserved-{self.stream}-{message.seq}"},
            )
            # Refused if another sweeper deleted it, or a worker took it meanwhile.
            with contextlib.suppress(APIError):
                await jetstream.delete_msg(self.stream, message.seq)
            if not stored.duplicate:
                swept.append(made.stored_as(str(stored.seq)))
        return swept

    async def delete_namespace(self, agents: Sequence[str]) -> None:
        # Its two streams, and with them their consumers; replies and control are core NATS.
        jetstream = self._client.jetstream()
        for stream in (self.stream, self.dead_stream):
            with contextlib.suppress(NotFoundError):
                await jetstream.delete_stream(stream)

    async def publish_control(self, data: bytes) -> None:
        await self._broker.publish(data, self.control_channel())  # core NATS: not stored

    async def open_control(self, handler: ControlHandler) -> None:
        async def on_control(body: Any) -> None:
            handler(body)

        subscriber = self._broker.subscriber(
            self.control_channel(), no_reply=True, decoder=raw_body
        )
        subscriber(on_control)
        await subscriber.start()
        self._control = subscriber


def _num_delivered(message: Any) -> int:
    """JetStream's count of a message's deliveries (1 if it does not say)."""
    try:
        count = int(message.metadata.num_delivered)
    except Exception:
        return 1
    return max(count, 1)


def _servers(secret: str, hosts: Sequence[str]) -> list[str]:
    """One server URL per host of ``nats://user:pass@a:4222,b:4222`` (the client's form)."""
    scheme, _, rest = secret.partition("://")
    authority = rest.partition("/")[0].partition("?")[0]
    userinfo = authority.rpartition("@")[0]
    prefix = f"{scheme}://{userinfo + '@' if userinfo else ''}"
    return [prefix + host for host in hosts]
