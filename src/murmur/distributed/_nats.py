"""``nats://`` / ``tls://``: NATS JetStream through FastStream's ``NatsBroker``.

* Tasks: one JetStream stream per namespace (``<namespace>-tasks``, sanitised, holding
  the subjects ``<namespace>.tasks.>``) with work-queue retention: a message stays until
  a worker acknowledges it. Whichever side connects first creates the stream, so tasks
  published before any worker started wait in it. Each agent has one durable pull
  consumer (named after the agent, filtered on its subject, delivering from the start)
  that every worker shares: competing consumers. A worker pulls one message at a time
  (answered as soon as one is there), so it never holds more than its slots plus one.
* A message is acknowledged only once its result is published; until then the worker
  tells the server it is still working on it (every ``PROGRESS_EVERY`` seconds), so a
  long task is not handed to another worker, while a dead worker's messages come back
  after ``ACK_WAIT`` seconds. ``nack`` makes the message deliverable again at once.
* Replies: core NATS, subject ``<namespace>.reply.<caller>`` (nothing stored: the caller
  listens before it publishes its first task).
* Control: core NATS, subject ``<namespace>.control``, subscribed to by every worker (no
  queue group: each hears every message).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
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
from nats.js.errors import BadRequestError

from ._adapter import (
    NO_LOGGER,
    BrokerAdapter,
    ControlHandler,
    ReplyHandler,
    TaskHandler,
    safe_name,
)
from ._faststream import MESSAGE, hand_over, raw_body

__all__ = ["ACK_WAIT", "PROGRESS_EVERY", "NatsAdapter"]

#: Seconds JetStream waits for a delivered task's ack (or progress) before it delivers
#: the task again: how long a dead worker's tasks wait.
ACK_WAIT = 30.0
#: Seconds between a worker's "still working on it" signals for each task it holds.
PROGRESS_EVERY = 10.0
#: Seconds one pull request waits on the server (a task arriving meanwhile is answered
#: at once); the subscriber then asks again.
PULL_TIMEOUT = 5.0
#: JetStream's error code for "stream name already in use with a different configuration".
_STREAM_EXISTS = 10058


class _NatsDelivery:
    __slots__ = ("_adapter", "_message", "_progress")

    #: How many times delivered (see ``Delivery.deliveries``); 1 until counted.
    deliveries = 1

    def __init__(self, adapter: NatsAdapter, message: Any) -> None:
        self._adapter = adapter
        self._message = message
        self._progress = asyncio.get_running_loop().create_task(self._keep_alive())
        adapter._held.add(self)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            try:
                await self._message.in_progress()
            except Exception:
                return  # disconnected: the server redelivers it after ACK_WAIT

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
        self._broker = NatsBroker(servers, error_cb=self._first_connection, logger=NO_LOGGER)
        self._client: Any = None
        self._subscribers: list[Any] = []
        self._replies: Any = None
        self._control: Any = None
        self._held: set[_NatsDelivery] = set()

    @property
    def stream(self) -> str:
        """The JetStream stream holding this namespace's tasks."""
        return f"{safe_name(self.namespace)}-tasks"

    def consumer_name(self, agent: str) -> str:
        """The durable consumer all workers of ``agent`` share (unique within the stream)."""
        return safe_name(agent)

    async def connect(self) -> None:
        await self._broker.start()
        self._client = await self._broker.connect()
        self._first_connection.made = True
        await self._ensure_stream()

    async def _ensure_stream(self) -> None:
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{self.namespace}.tasks.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
        )
        try:
            await self._client.jetstream().add_stream(config)  # same config: a no-op
        except BadRequestError as exc:
            if exc.err_code != _STREAM_EXISTS:
                raise
            # Created by someone with other settings (an operator's limits): use it.

    async def aclose(self) -> None:
        try:
            await self.stop_consuming()
            replies, self._replies = self._replies, None
            if replies is not None:
                await replies.stop()
            control, self._control = self._control, None
            if control is not None:
                await control.stop()
            for delivery in list(self._held):
                delivery._settled()  # unsettled: redelivered after ACK_WAIT
        finally:
            await self._broker.stop()

    async def publish_task(self, agent: str, data: bytes) -> None:
        # Through JetStream: returns once the stream has stored it.
        await self._broker.publish(data, self.task_channel(agent), stream=self.stream)

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
                    ack_wait=ACK_WAIT,
                    deliver_policy=DeliverPolicy.ALL,
                ),
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


def _servers(secret: str, hosts: Sequence[str]) -> list[str]:
    """One server URL per host of ``nats://user:pass@a:4222,b:4222`` (the client's form)."""
    scheme, _, rest = secret.partition("://")
    authority = rest.partition("/")[0].partition("?")[0]
    userinfo = authority.rpartition("@")[0]
    prefix = f"{scheme}://{userinfo + '@' if userinfo else ''}"
    return [prefix + host for host in hosts]
