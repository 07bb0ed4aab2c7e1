"""``amqp://`` / ``amqps://``: RabbitMQ through FastStream's ``RabbitBroker``.

* The hot path (tasks and replies published, deliveries consumed and acknowledged) goes
  below FastStream, on aiormq's channels under FastStream's aio-pika connections
  (``_amqp``): the messages published at about the same time (a gather's tasks, the
  results of tasks that finish together) are written together and their publisher
  confirmations awaited together (a group commit: one alone is written at once); the
  acknowledgements of deliveries settled together go as one ``multiple`` ack up to the
  highest tag below which every delivery of the channel is settled, the rest one by one.
  FastStream does the rest (declarations, dead letters, sweeps, control).

* Tasks: one durable quorum queue per agent (``<namespace>.tasks.<agent>``) on the
  default exchange, declared (idempotently, same arguments) by whichever side comes first,
  so tasks published before any worker started wait in it; a caller declares each once
  (concurrent first publishes share the declaration). Task messages are persistent.
  Every worker consumes the queue: competing consumers, each with at most ``prefetch``
  unacknowledged messages per queue (quorum queues refuse a channel-wide QoS).
* Quorum queues because they count a message's deliveries (``x-delivery-count``: the
  returns before this delivery, by ``nack`` or by a consumer's connection dropping);
  classic queues only flag a message as redelivered, which cannot bound a task that kills
  its workers. A classic queue of the same name (made by an older Murmur) makes the
  declaration fail: delete it once drained.
* A message is acknowledged only once its result is published (confirmed); ``nack``
  requeues it.
  A worker whose connection drops (it died) has its unacknowledged messages requeued by
  the broker at once. A worker consumes on a connection of its own (made afresh for each
  try at starting its consumers), apart from the one it publishes on.
* No timer of Murmur's: RabbitMQ's own ``consumer_timeout`` (30 minutes by default, set on
  the server only in 3.10) closes the channel of a consumer that holds a delivery longer,
  and every message it held goes back to the queue, to run again elsewhere. A task held
  for ``CONSUMER_TIMEOUT_WARNING`` seconds or more is logged once (a warning).
* Outages: each connection is aio-pika's robust one, reconnecting every
  ``RECONNECT_INTERVAL`` seconds and restoring its channels, their QoS and queues (the
  adapter's consumers consume again once their channel is back); the outage is logged. A
  batch of tasks or replies published while the connection is down is published again
  once it is back (for up to ``RECONNECT_SECONDS``); an ack or nack of a delivery taken
  before the outage fails (RabbitMQ requeued the message when the connection dropped).
* Replies: one durable queue per caller (``<namespace>.reply.<caller>``), deleted when
  the caller closes. It outlives the caller's connection, a broker restart included, so
  replies sent while its caller reconnects wait for it (an exclusive queue would go with
  the connection, and them with it); a caller that died leaves it to expire
  ``REPLY_EXPIRES_SECONDS`` after its last use. Replies are not persistent: one the
  caller has not taken yet when the server stops is lost. A caller takes up to
  ``REPLY_PREFETCH`` replies ahead, acknowledging them in batches. Once aio-pika's robust
  connection has restored the caller's queue and consumer, the adapter tells its owner
  (``on_reconnect``), and the caller asks the workers for any result still missing.
* Dead letters: the durable classic queue ``<namespace>.dead``, a persistent message
  each, its ``message_id`` the dead letter's id. Listing takes every message without
  acknowledging it (``basic.get``) and puts them all back (``nack`` with requeue: they
  keep their places), so a listing briefly hides them from another; a replay acknowledges
  those it re-queued. (A stream queue would be read without taking, but a message cannot
  be removed from a stream.)
* Unserved tasks: a caller names each agent it publishes to in the namespace's registry
  (the durable classic queue ``<namespace>.agents``, a message per agent name, once per
  connection; AMQP cannot list queues). A sweep reads the registry (taking every name and
  putting back one of each), and takes (``basic.get``) up to ``SWEEP_BATCH`` of the
  messages of each agent queue that has no consumer: one it picks is stored as a dead
  letter, then acknowledged (a message is given to one taker only); one it leaves goes
  back as a copy at the end of the queue, with its deliveries so far in the header
  ``murmur-deliveries`` (a message taken and put back would count one more delivery).
* Control: the durable fanout exchange ``<namespace>.control`` (declared by whichever side
  comes first); each worker binds an exclusive, auto-delete queue of its own to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
from aiormq.exceptions import ChannelInvalidStateError
from faststream.rabbit import (
    ExchangeType,
    QueueType,
    RabbitBroker,
    RabbitExchange,
    RabbitQueue,
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
)
from ._amqp import PERSISTENT, TRANSIENT, Consumer, Publisher, Settlements
from ._faststream import hand_over, raw_body
from ._group import GroupCommit
from ._outage import RECONNECT_SECONDS, RETRY_CAP_SECONDS, OutageLog, backoff

__all__ = ["RabbitAdapter"]

#: Tries at starting a worker's consumers (a fresh quorum queue can refuse the first).
CONSUME_ATTEMPTS = 4
#: Messages of one unconsumed queue a sweep takes, at most (those it leaves go to the end).
SWEEP_BATCH = 1000
#: Deliveries before a copy of a task a sweep left (added to ``x-delivery-count``).
DELIVERIES_HEADER = "murmur-deliveries"
#: Seconds between two tries at reconnecting a lost connection (aio-pika's default: 5).
RECONNECT_INTERVAL = RETRY_CAP_SECONDS
#: A task held this long (half RabbitMQ's default ``consumer_timeout`` of 30 minutes) is
#: logged once: held past the server's ``consumer_timeout``, its channel is closed and
#: what it held runs again elsewhere.
CONSUMER_TIMEOUT_WARNING = 15 * 60.0
#: A reply queue nobody uses (its caller died) is deleted by the server after this long.
REPLY_EXPIRES_SECONDS = 3600
#: Replies a caller takes ahead of handling them.
REPLY_PREFETCH = 1000
#: Seconds a close may spend deleting the reply queue, and then closing the connections.
CLOSE_SECONDS = 5.0
#: What an operation fails with while the connection is down (it was not done, or not
#: confirmed): tried again once reconnected.
_OUTAGE = (ConnectionError, ChannelInvalidStateError)

_log = logging.getLogger("murmur.distributed")


class _RabbitDelivery:
    __slots__ = ("_adapter", "_channel", "_queue", "_tag", "_taken", "deliveries")

    def __init__(self, adapter: RabbitAdapter, message: Any) -> None:
        self._adapter = adapter
        #: aiormq's channel it came on (acknowledged there, or not at all) and its tag.
        self._channel = message.channel
        self._tag: int = message.delivery_tag
        self._queue: str = message.routing_key or ""
        self._taken = time.monotonic()
        #: How many times delivered (see ``Delivery.deliveries``): the quorum queue's
        #: count of earlier deliveries, plus this one.
        self.deliveries = _delivery_count(message.header.properties.headers) + 1

    @property
    def channel(self) -> str:
        return self._queue

    async def ack(self) -> None:
        self._adapter._held(self._queue, time.monotonic() - self._taken)
        await self._adapter._acks.write((self._channel, self._tag))

    async def nack(self) -> None:
        self._adapter._held(self._queue, time.monotonic() - self._taken)
        await self._adapter._settlements.nack(self._channel, self._tag)


class RabbitAdapter(BrokerAdapter):
    """A durable quorum queue per agent, a durable reply queue per caller."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outage = OutageLog(self.url.redacted)
        self._closing = False
        self._broker = self._new_broker()
        #: The worker's task consumers' connection (``consume``).
        self._consuming: RabbitBroker | None = None
        self._declared: set[str] = set()
        self._declaring: dict[str, asyncio.Lock] = {}
        #: The worker's task consumer and the caller's reply consumer (``_amqp``).
        self._tasks_in: Consumer | None = None
        self._replies_in: Consumer | None = None
        self._reply_queue: RabbitQueue | None = None
        #: The channel tasks and replies are published on (made when first used).
        self._publisher: Publisher | None = None
        self._opening = asyncio.Lock()
        # Messages and acknowledgements made together go together: a batch of publishes
        # in one write, confirmed together; acknowledgements in as few frames as can be.
        self._tasks_out: GroupCommit[tuple[str, bytes, int]] = GroupCommit(self._publish)
        self._replies_out: GroupCommit[tuple[str, bytes, int]] = GroupCommit(self._publish)
        self._settlements = Settlements()
        self._acks: GroupCommit[tuple[Any, int]] = GroupCommit(self._settlements.ack)
        self._control: Any = None
        self._control_declared = False
        self._warned_held = False

    def _new_broker(self) -> RabbitBroker:
        """A broker (one robust connection) whose outages are logged."""
        return RabbitBroker(
            self.url.secret,
            logger=NO_LOGGER,
            reconnect_interval=RECONNECT_INTERVAL,
            on_close=[self._lost],
            on_reconnected=[self._back],
        )

    def _lost(self, connection: Any, error: BaseException | None) -> None:
        if error is None or self._closing or connection.close_called:
            return  # closed by this side
        self._outage.lost(error)

    def _back(self, connection: Any) -> None:
        self._outage.back()
        # Its channels, queues and consumers are restored (a caller's reply queue too):
        # the owner may ask for what it missed.
        self._tell_reconnected()

    def _held(self, queue: str, seconds: float) -> None:
        """A delivery is settled after ``seconds``: warn (once) if that was close to
        RabbitMQ's default ``consumer_timeout``."""
        if seconds < CONSUMER_TIMEOUT_WARNING or self._warned_held:
            return
        self._warned_held = True
        _log.warning(
            "a task from %s was held %.0fs before it was settled: RabbitMQ's consumer_timeout "
            "(30 minutes unless the server sets another) closes the channel of a consumer "
            "holding a delivery longer, and what it held runs again on another worker; for "
            "tasks this long, raise consumer_timeout on the server",
            queue,
            seconds,
        )

    def control_exchange(self) -> RabbitExchange:
        """The fanout exchange every worker's control queue is bound to (declared alike by
        callers and workers)."""
        return RabbitExchange(self.control_channel(), type=ExchangeType.FANOUT, durable=True)

    def task_queue(self, agent: str) -> RabbitQueue:
        """The queue declaration callers and workers share (any difference would make
        RabbitMQ refuse the second declaration)."""
        return RabbitQueue(self.task_channel(agent), QueueType.QUORUM, durable=True)

    def reply_queue(self, caller: str) -> RabbitQueue:
        """The queue of ``caller``'s replies."""
        return RabbitQueue(
            self.reply_channel(caller),
            durable=True,
            arguments={"x-expires": int(REPLY_EXPIRES_SECONDS * 1000)},
        )

    def dead_queue(self) -> RabbitQueue:
        """The queue of this namespace's dead letters."""
        return RabbitQueue(self.dead_channel(), durable=True)

    def agents_queue(self) -> RabbitQueue:
        """The registry of the agents callers publish tasks to (a message per name)."""
        return RabbitQueue(f"{self.namespace}.agents", durable=True)

    async def connect(self) -> None:
        await self._broker.start()

    async def aclose(self) -> None:
        self._closing = True
        try:
            await self.stop_consuming()
            replies, self._replies_in = self._replies_in, None
            if replies is not None:
                await replies.stop()
                await self._delete_replies()
            control, self._control = self._control, None
            if control is not None:
                await control.stop()
        finally:
            # Even if this close is cancelled (its time is up): a connection left open
            # would go on reconnecting for good.
            with anyio.CancelScope(shield=True) as closing:
                closing.deadline = anyio.current_time() + CLOSE_SECONDS
                try:
                    await self._acks.drain()
                    await self._settlements.drain()
                    consuming, self._consuming = self._consuming, None
                    if consuming is not None:
                        await consuming.stop()  # what is still unacknowledged goes back
                finally:
                    await self._broker.stop()

    async def _delete_replies(self) -> None:
        """Delete this caller's reply queue (with any reply nobody waits for now); if the
        broker is not reachable now, it expires by itself."""
        queue, self._reply_queue = self._reply_queue, None
        if queue is None or not await self._broker.ping(timeout=0.1):
            return  # not waited for (a robust channel would wait for the reconnection)
        try:
            with anyio.fail_after(CLOSE_SECONDS):
                declared = await self._broker.declare_queue(queue)
                await declared.delete(if_unused=False, if_empty=False)
        except Exception:
            _log.warning("could not delete the reply queue %s", queue.name, exc_info=True)

    async def _again(self, operation: Callable[[], Awaitable[Any]]) -> None:
        """``operation``, done again while it fails for want of a connection (once the
        robust connection is back), for up to ``RECONNECT_SECONDS``."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + RECONNECT_SECONDS
        failures = 0
        while True:
            try:
                await operation()
            except _OUTAGE:
                failures += 1
                if loop.time() >= give_up:
                    raise
                await asyncio.sleep(backoff(failures))
            else:
                return

    async def publish_task(self, agent: str, data: bytes) -> None:
        if self.task_channel(agent) not in self._declared:
            await self._again(lambda: self._declare(agent))
        await self._tasks_out.write((self.task_channel(agent), data, PERSISTENT))

    async def _publish(self, messages: Sequence[tuple[str, bytes, int]]) -> None:
        """Publish a batch of messages (tasks or replies) in one write, confirmed together.
        If the connection drops before they are all confirmed, the batch is published
        again once it is back: at worst a task is stored twice, run twice, and its caller
        keeps the first result (and drops a second reply)."""

        async def publish() -> None:
            publisher = self._publisher
            if publisher is None:
                async with self._opening:
                    if self._publisher is None:
                        self._publisher = await Publisher.open(await self._broker.connect())
                    publisher = self._publisher
            await publisher.publish(messages)

        await self._again(publish)

    async def _declare(self, agent: str) -> None:
        """Declare ``agent``'s task queue, once: the first publishes of a batch wait for
        one declaration (a quorum queue is slow to create) rather than each send its own.
        One cut short (its caller's deadline) is made again by the next."""
        name = self.task_channel(agent)
        if name in self._declared:
            return
        async with self._declaring.setdefault(name, asyncio.Lock()):
            if name not in self._declared:
                await self._broker.declare_queue(self.task_queue(agent))
                registry = await self._broker.declare_queue(self.agents_queue())
                await self._broker.publish(agent.encode(), queue=registry.name, persist=True)
                self._declared.add(name)

    async def open_replies(self, caller: str, handler: ReplyHandler) -> str:
        async def on_reply(message: Any) -> None:
            handler(message.body)
            self._settlements.ack_soon(message.channel, message.delivery_tag)

        queue = self.reply_queue(caller)
        # A channel of its own, taking up to ``REPLY_PREFETCH`` replies ahead; the queue is
        # declared on it, so that aio-pika declares it again there (before the consumer
        # starts again) once reconnected.
        connection = await self._broker.connect()
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=REPLY_PREFETCH)
        await _declare_on(channel, queue)
        consumer = Consumer(channel, on_reply)
        await consumer.consume(queue.name, f"{queue.name}.{uuid.uuid4().hex[:8]}")
        self._replies_in = consumer
        self._reply_queue = queue
        return queue.name

    async def publish_reply(self, address: str, data: bytes) -> None:
        await self._replies_out.write((address, data, TRANSIENT))

    async def consume(
        self, agents: Sequence[str], handler: TaskHandler, *, prefetch: int, consumer: str
    ) -> None:
        async def on_task(message: Any) -> None:
            await hand_over(handler, message.body, _RabbitDelivery(self, message))

        for attempt in range(CONSUME_ATTEMPTS):
            # Each try on a connection of its own, made for it: a failed try is closed
            # whole, with whatever consumers it had started (nothing was taken yet), and
            # the next starts clean. Apart from the connection publishing results, as
            # RabbitMQ advises (a publisher the server throttles does not hold the acks).
            # One channel for all of this worker's queues; quorum queues take a QoS per
            # consumer only, so each queue may have ``prefetch`` taken ahead.
            broker = self._new_broker()
            try:
                await broker.start()
                channel = await (await broker.connect()).channel(publisher_confirms=False)
                await channel.set_qos(prefetch_count=prefetch)
                # Declared first: a consumer on a quorum queue RabbitMQ has only just made
                # can crash the connection (3.10: its Raft member is not running yet).
                # On the consumers' channel, which declares them again once reconnected.
                for agent in agents:
                    await _declare_on(channel, self.task_queue(agent))
                tasks_in = Consumer(channel, on_task)
                for agent in agents:
                    name = self.task_channel(agent)
                    await tasks_in.consume(name, f"{name}.{consumer}.{uuid.uuid4().hex[:8]}")
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    try:
                        await broker.stop()
                    except Exception:
                        _log.debug("closing a failed consumer connection failed", exc_info=True)
                if not isinstance(exc, Exception) or attempt + 1 == CONSUME_ATTEMPTS:
                    raise
                _log.warning("starting the consumers failed; retrying", exc_info=True)
                await asyncio.sleep(0.05 * 2**attempt)
            else:
                self._consuming = broker
                self._tasks_in = tasks_in
                return

    async def stop_consuming(self) -> None:
        # Their connection stays open: the tasks already taken are still to be settled.
        tasks_in, self._tasks_in = self._tasks_in, None
        if tasks_in is not None:
            await tasks_in.stop()

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        await self._store(letter)

    async def _store(self, letter: DeadLetter) -> str:
        """Keep ``letter`` in the dead-letter queue; its id there."""
        queue = self.dead_queue()
        await self._broker.declare_queue(queue)
        key = uuid.uuid4().hex[:16]
        await self._broker.publish(letter.to_json(), queue=queue.name, persist=True, message_id=key)
        return key

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

    async def replay_dead_letters(
        self, ids: Sequence[str] | None, *, deadline_in: float = DEFAULT_REPLAY_DEADLINE
    ) -> list[DeadLetter]:
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
                    await self.publish_task(letter.agent, replayable(letter.data, deadline_in))
                    queued.add(letter.fingerprint)
                await message.ack()
                taken.remove(message)
                replayed.append(letter)
        finally:
            await _put_back(taken)
        return replayed

    async def sweep_unserved(
        self, served: Sequence[str], letter: UnservedLetter
    ) -> list[DeadLetter]:
        swept: list[DeadLetter] = []
        for agent in sorted(await self._registered() - set(served)):
            swept += await self._sweep(agent, letter)
        return swept

    async def _registered(self) -> set[str]:
        """The agents named in the registry, which is left with one message per name."""
        queue = await self._broker.declare_queue(self.agents_queue())
        taken = []
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            taken.append(message)
        names = {message.body.decode(errors="replace") for message in taken}
        try:
            for name in sorted(names):
                await self._broker.publish(name.encode(), queue=queue.name, persist=True)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _put_back(taken)
            raise
        for message in taken:
            await message.ack()
        return names

    async def _sweep(self, agent: str, letter: UnservedLetter) -> list[DeadLetter]:
        """Dead-letter what ``letter`` picks among the messages of ``agent``'s queue, if
        nothing consumes it."""
        queue = await self._broker.declare_queue(self.task_queue(agent))
        counts = await queue.declare()  # now (FastStream keeps its first declaration)
        if counts.consumer_count or not counts.message_count:
            return []
        swept: list[DeadLetter] = []
        for _ in range(min(counts.message_count, SWEEP_BATCH)):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            before = _delivery_count(message.headers)
            made = letter(message.body, agent, before)
            if made is None:
                await self._broker.publish(
                    message.body,
                    queue=queue.name,
                    persist=True,
                    headers={DELIVERIES_HEADER: before},
                )
            else:
                swept.append(made.stored_as(await self._store(made)))
            await message.ack()
        return swept

    async def delete_namespace(self, agents: Sequence[str]) -> None:
        # AMQP cannot list queues: those of ``agents``, the dead letters, the registry and
        # the control exchange. Reply queues go with their callers, workers' control queues
        # with their connections. Declared as their users declare them, then deleted.
        queues = [*(self.task_queue(agent) for agent in agents), self.dead_queue()]
        for queue in [*queues, self.agents_queue()]:
            declared = await self._broker.declare_queue(queue)
            await declared.delete(if_unused=False, if_empty=False)
        exchange = await self._broker.declare_exchange(self.control_exchange())
        await exchange.delete(if_unused=False)

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


def _delivery_count(headers: Any) -> int:
    """Earlier deliveries of a message with ``headers``: a quorum queue's
    ``x-delivery-count`` header, plus, for a copy a sweep made, the original's
    (``DELIVERIES_HEADER``); 0 if absent."""
    headers = headers or {}
    counts = (headers.get(name, 0) for name in ("x-delivery-count", DELIVERIES_HEADER))
    return sum(count for count in counts if isinstance(count, int) and count > 0)


async def _declare_on(channel: Any, queue: RabbitQueue) -> None:
    """Declare ``queue`` as FastStream would (same arguments) on aio-pika's ``channel``."""
    await channel.declare_queue(
        queue.name,
        durable=queue.durable,
        exclusive=queue.exclusive,
        auto_delete=queue.auto_delete,
        arguments=queue.arguments,
    )


def _letter(message: Any) -> DeadLetter:
    return DeadLetter.from_json(message.body, message.message_id or "")


async def _put_back(messages: list[Any]) -> None:
    for message in messages:
        await message.nack(requeue=True)
