"""``nats://`` / ``tls://``: NATS JetStream through FastStream's ``NatsBroker``.

* Tasks: one JetStream stream per namespace (``<namespace>-tasks``, sanitised, holding
  the subjects ``<namespace>.tasks.>``) with work-queue retention: a message stays until
  a worker acknowledges it. Whichever side connects first creates the stream, so tasks
  published before any worker started wait in it. Each agent has one durable pull
  consumer (named after the agent, filtered on its subject, delivering from the start)
  that every worker shares: competing consumers. A worker pulls one message at a time
  (answered as soon as one is there), so it never holds more than its slots plus one.
* A message is acknowledged only once its result is published; until then the worker
  tells the server it is still working on it (every third of the consumer's ack wait),
  so a long task is not handed to another worker, while a dead worker's messages come
  back after the ack wait: ``redeliver_after`` seconds for the consumers a worker creates
  (an existing consumer keeps its own; the worker's signals follow the consumer's).
  ``nack`` makes the message deliverable again at once.
* A delivered message's count of deliveries is JetStream's own (``num_delivered``).
* Replies: core NATS, subject ``<namespace>.reply.<caller>`` (nothing stored: the caller
  listens before it publishes its first task).
* Dead letters: the JetStream stream ``<namespace>-dead`` (sanitised, limits retention,
  subject ``<namespace>.dead``), created with the task stream; a dead letter's id is its
  stream sequence number, and a replay re-queues it and deletes that message.
* Outages: nats-py reconnects without end (``RECONNECT_WAIT`` apart), resubscribes, and
  sends what was published meanwhile once it is back; the outage is logged. A task
  published while the server is gone is published again until it is stored (for up to
  ``RECONNECT_SECONDS``). A reply is not stored: one sent while its caller is not
  connected is lost, and that attempt ends at its deadline.
* Control: core NATS, subject ``<namespace>.control``, subscribed to by every worker (no
  queue group: each hears every message).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
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
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from ._adapter import (
    NO_LOGGER,
    BrokerAdapter,
    ControlHandler,
    DeadLetter,
    ReplyHandler,
    TaskHandler,
    safe_name,
)
from ._faststream import MESSAGE, hand_over, raw_body
from ._outage import RECONNECT_SECONDS, OutageLog, backoff

__all__ = ["PROGRESS_SHARE", "NatsAdapter"]

#: A worker's "still working on it" signals for each task it holds come this share of
#: the consumer's ack wait apart (the ack wait: how long a dead worker's tasks wait).
PROGRESS_SHARE = 1 / 3
#: Seconds one pull request waits on the server (a task arriving meanwhile is answered
#: at once); the subscriber then asks again.
PULL_TIMEOUT = 5.0
#: JetStream's error code for "stream name already in use with a different configuration".
_STREAM_EXISTS = 10058
#: Seconds between two attempts to reach a server that went away.
RECONNECT_WAIT = 1
#: A JetStream publish that fails with these did not reach a server that could store it.
_NOT_STORED = (
    NatsTimeoutError,
    NoRespondersError,
    ConnectionReconnectingError,
    ServiceUnavailableError,
    TimeoutError,
)


class _NatsDelivery:
    __slots__ = ("_adapter", "_message", "_progress", "deliveries")

    def __init__(self, adapter: NatsAdapter, message: Any) -> None:
        self._adapter = adapter
        self._message = message
        #: How many times delivered (see ``Delivery.deliveries``): JetStream counts them.
        self.deliveries = _num_delivered(message.raw_message)
        self._progress = asyncio.get_running_loop().create_task(self._keep_alive())
        adapter._held.add(self)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._adapter._progress_every)
            try:
                await self._message.in_progress()
            except Exception:
                return  # disconnected: the server redelivers it after the ack wait

    @property
    def channel(self) -> str:
        subject: str = self._message.raw_message.subject
        return subject

    def _settled(self) -> None:
        self._progress.cancel()
        self._adapter._held.discard(self)

    async def ack(self) -> None:
        self._settled()
        await self._message.ack()

    async def nack(self) -> None:
        self._settled()
        await self._message.nack()


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
        self._subscribers: list[Any] = []
        self._replies: Any = None
        self._control: Any = None
        self._held: set[_NatsDelivery] = set()
        self._progress_every = self.redeliver_after * PROGRESS_SHARE
        self._closing = False

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
        self._first_connection.made = True
        await self._ensure_stream()

    async def _disconnected(self) -> None:
        if self._first_connection.made and not self._closing:
            self._outage.lost(ConnectionError("disconnected"))

    async def _reconnected(self) -> None:
        self._outage.back()

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
            try:
                await self._client.jetstream().add_stream(config)  # same config: a no-op
            except BadRequestError as exc:
                if exc.err_code != _STREAM_EXISTS:
                    raise
                # Created by someone with other settings (an operator's limits): use it.

    async def aclose(self) -> None:
        self._closing = True
        try:
            await self.stop_consuming()
            replies, self._replies = self._replies, None
            if replies is not None:
                await replies.stop()
            control, self._control = self._control, None
            if control is not None:
                await control.stop()
            for delivery in list(self._held):
                delivery._settled()  # unsettled: redelivered after the ack wait
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
        while True:
            try:
                await self._broker.publish(data, self.task_channel(agent), stream=self.stream)
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

        async def on_reply(body: Any) -> None:
            handler(body)

        subscriber = self._broker.subscriber(subject, no_reply=True, decoder=raw_body)
        subscriber(on_reply)
        await subscriber.start()
        self._replies = subscriber
        return subject

    async def publish_reply(self, address: str, data: bytes) -> None:
        await self._broker.publish(data, address)

    async def consume(
        self, agents: Sequence[str], handler: TaskHandler, *, prefetch: int, consumer: str
    ) -> None:
        async def on_task(body: Any, message: Any = MESSAGE) -> None:
            await hand_over(handler, body, _NatsDelivery(self, message))

        stream = JStream(self.stream, declare=False)
        for agent in agents:
            durable = self.consumer_name(agent)
            subscriber = self._broker.subscriber(
                self.task_channel(agent),
                stream=stream,
                durable=durable,
                # One message per pull: a pull for more waits for all of them (or the
                # timeout), which would hold back a lone task.
                pull_sub=PullSub(batch_size=1, timeout=PULL_TIMEOUT),
                config=ConsumerConfig(
                    durable_name=durable,
                    ack_policy=JsAckPolicy.EXPLICIT,
                    ack_wait=self.redeliver_after,
                    deliver_policy=DeliverPolicy.ALL,
                ),
                ack_policy=AckPolicy.MANUAL,
                no_reply=True,
                decoder=raw_body,
            )
            subscriber(on_task)
            await subscriber.start()
            self._subscribers.append(subscriber)
            # A consumer another worker created keeps its ack wait: signal within it.
            info = await self._client.jetstream().consumer_info(self.stream, durable)
            ack_wait = info.config.ack_wait or self.redeliver_after
            self._progress_every = min(self._progress_every, ack_wait * PROGRESS_SHARE)

    async def stop_consuming(self) -> None:
        subscribers, self._subscribers = self._subscribers, []
        for subscriber in subscribers:
            await subscriber.stop()

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

    async def replay_dead_letters(self, ids: Sequence[str] | None) -> list[DeadLetter]:
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
                await self.publish_task(letter.agent, letter.data)
            await jetstream.delete_msg(self.dead_stream, int(letter.id))
        return letters

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
