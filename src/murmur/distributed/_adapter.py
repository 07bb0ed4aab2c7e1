"""The shape every broker adapter has: tasks to workers by agent name, replies to callers.

An adapter is a thin layer over one FastStream broker (or, for ``memory://``, an
in-process hub). Everything it does runs on one asyncio loop, the adapter's home: the
caller's loop under asyncio, the runtime's helper loop under Trio.

* Tasks go to a per-agent queue (a stream, subject or queue named after the agent) that
  competing workers consume; a task message is acknowledged (``Delivery.ack``) only once
  its result has been published, so a worker that dies mid-task leaves it to be delivered
  again.
* Replies (results and events) go to a per-caller reply address and are matched there by
  correlation id; no broker's RPC is used (Kafka has none).
* Dead letters (task messages a worker cannot or must not run) go to the namespace's
  dead-letter store (``<namespace>.dead``) with why, from where and by whom, the original
  bytes untouched; ``murmur dlq`` lists them and replays them onto their agent's channel.
  Workers also sweep the task channels no live worker consumes (``sweep_unserved``): a
  task whose deadline passed there is dead-lettered as ``unserved``.
* Control messages (cancellations) go to one per-namespace control channel that every
  worker hears (a broadcast, not a competing queue); nothing there is stored for a worker
  that was not listening.
* Reconnection: an adapter whose connection came back after it was lost tells its owner
  (``on_reconnect``): a caller then asks the workers to send again the results it may have
  missed meanwhile.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from ..errors import InvalidValueError, MissingDependencyError, NotAvailableError
from ._url import BrokerURL

_log = logging.getLogger("murmur.distributed")

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_REDELIVER_AFTER",
    "DEFAULT_REPLAY_DEADLINE",
    "NO_LOGGER",
    "BrokerAdapter",
    "ControlHandler",
    "DeadLetter",
    "Delivery",
    "ReplyHandler",
    "TaskHandler",
    "UnservedLetter",
    "load_adapter",
    "replayable",
    "safe_name",
]

#: Prefix of every stream, subject, queue and topic Murmur creates (``MURMUR_NAMESPACE``).
DEFAULT_NAMESPACE = "murmur"
#: Seconds a task taken by a worker that stopped answering waits before the broker (or,
#: on Redis, a live worker) delivers it again; see ``BrokerAdapter``.
DEFAULT_REDELIVER_AFTER = 30.0
#: Seconds a replayed task whose deadline has passed is given to run (``murmur dlq replay
#: --deadline``): its new deadline is that far from the replay.
DEFAULT_REPLAY_DEADLINE = 300.0


class Delivery(Protocol):
    """One received task message, to be settled once its result is published."""

    #: How many times the broker has delivered this message, this time included (1: the
    #: first delivery); where a broker cannot tell, 1.
    deliveries: int

    @property
    def channel(self) -> str:
        """The task channel (stream, subject, queue, topic) it was received on."""
        ...

    async def ack(self) -> None:
        """Done: the broker may forget the message."""
        ...

    async def nack(self) -> None:
        """Not done: deliver the message again (to this or another worker)."""
        ...


#: FastStream's ``logger=`` for no logging at all: a library writes no log lines of its
#: broker client's own (Murmur's reports go to the ``murmur`` loggers).
NO_LOGGER: Any = None

#: Called with a task message's bytes; returns once the worker has taken it (backpressure).
TaskHandler = Callable[[bytes, Delivery], Awaitable[None]]
#: Called with each reply's bytes, in arrival order; must not block.
ReplyHandler = Callable[[bytes], None]
#: Called with each control message's bytes, in arrival order; must not block.
ControlHandler = Callable[[bytes], None]


@dataclass(frozen=True)
class DeadLetter:
    """A task message set aside by a worker instead of run, and why.

    ``id`` is the dead-letter store's own (empty until stored); ``data`` the message's
    bytes as received; ``reason`` one of ``malformed``, ``unknown-version``,
    ``not-a-task``, ``unknown-agent``, ``delivery-limit``, ``unserved``, and ``detail``
    the worker's explanation; ``agent`` the agent whose channel it came from (where a
    replay puts it).
    """

    data: bytes
    reason: str
    detail: str
    agent: str
    worker: str
    timestamp: float
    deliveries: int
    id: str = ""

    def to_json(self) -> bytes:
        """How the stores keep it (the bytes base64-encoded: they may not be text)."""
        record = {
            "reason": self.reason,
            "detail": self.detail,
            "agent": self.agent,
            "worker": self.worker,
            "timestamp": self.timestamp,
            "deliveries": self.deliveries,
            "data": base64.b64encode(self.data).decode(),
        }
        return json.dumps(record).encode()

    @classmethod
    def from_json(cls, raw: bytes | str, id: str) -> DeadLetter:
        """A stored dead letter (``to_json``'s form) under its store ``id``.

        Raises:
            InvalidValueError: ``raw`` is not a stored dead letter.
        """
        try:
            record = json.loads(raw)
            return cls(
                data=base64.b64decode(record["data"]),
                reason=str(record["reason"]),
                detail=str(record.get("detail", "")),
                agent=str(record["agent"]),
                worker=str(record.get("worker", "")),
                timestamp=float(record.get("timestamp", 0.0)),
                deliveries=int(record.get("deliveries", 1)),
                id=id,
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidValueError(f"dead letter {id}: not a stored dead letter: {exc}") from None

    def stored_as(self, id: str) -> DeadLetter:
        return replace(self, id=id)

    @property
    def fingerprint(self) -> str:
        """The same for every copy of one message from one agent's channel: a worker whose
        acknowledgement failed after it stored the dead letter gets the message again, and
        stores it again (``murmur dlq`` shows and replays such copies once)."""
        return hashlib.sha256(self.agent.encode() + b"\0" + self.data).hexdigest()[:16]

    @staticmethod
    def first_copies(letters: Iterable[DeadLetter]) -> Iterator[tuple[DeadLetter, bool]]:
        """Each letter, and whether it is the first of ``letters`` with its
        ``fingerprint`` (a replay queues a message once, and removes every copy of it)."""
        seen: set[str] = set()
        for letter in letters:
            key = letter.fingerprint
            yield letter, key not in seen
            seen.add(key)


#: Called with a task message waiting in a channel no live worker consumes, its agent and
#: how many times it was delivered before: the dead letter to set it aside as, or ``None``
#: to leave it where it is. Must not block.
UnservedLetter = Callable[[bytes, str, int], DeadLetter | None]


class BrokerAdapter(ABC):
    """Connects to one broker; the caller side and the worker side of the same channels.

    Args:
        url: The broker's URL (``url.secret`` goes to the client, never into messages).
        namespace: Prefix of every channel name, so several apps (or test runs) can share
            one broker.
        redeliver_after: Seconds a taken, unsettled task may go without a sign of life
            from its worker before it is delivered to another (a worker keeps the tasks it
            holds alive while it runs). Redis: live workers reclaim it; NATS: the
            consumer's ack wait. RabbitMQ and Kafka ignore it: RabbitMQ requeues a dead
            worker's tasks when its connection drops, and has a timer of its own that
            Murmur cannot set per queue (the server's ``consumer_timeout``, 30 minutes by
            default: a task held longer is taken back and delivered again, even from a
            live worker); Kafka re-reads them once its group's session times out.
    """

    def __init__(
        self,
        url: BrokerURL,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        redeliver_after: float = DEFAULT_REDELIVER_AFTER,
    ) -> None:
        self.url = url
        self.namespace = namespace
        self.redeliver_after = redeliver_after
        self._on_reconnect: Callable[[], None] | None = None

    # -- names -------------------------------------------------------------------------

    def task_channel(self, agent: str) -> str:
        """Where tasks for ``agent`` are queued."""
        return f"{self.namespace}.tasks.{safe_name(agent)}"

    def reply_channel(self, caller: str) -> str:
        """Where replies for the caller ``caller`` arrive."""
        return f"{self.namespace}.reply.{caller}"

    def control_channel(self) -> str:
        """Where control messages for every worker of the namespace go."""
        return f"{self.namespace}.control"

    def dead_channel(self) -> str:
        """Where this namespace's dead letters are kept."""
        return f"{self.namespace}.dead"

    def agent_of(self, channel: str) -> str:
        """The agent whose task channel is ``channel`` (``task_channel``'s inverse)."""
        prefix = f"{self.namespace}.tasks."
        return unsafe_name(channel.removeprefix(prefix))

    # -- lifecycle ---------------------------------------------------------------------

    @abstractmethod
    async def connect(self) -> None:
        """Open the connection; raises if the broker cannot be reached."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop consuming, delete this caller's reply channel, close the connection."""

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Have ``callback`` called each time the connection comes back after it was lost,
        once this adapter's subscriptions (its reply channel) listen again: replies sent to
        it meanwhile may be gone. Called on the adapter's loop; it must not block. An
        adapter whose client does not tell (``memory://``, Kafka, whose reply topics keep
        what was sent) never calls it."""
        self._on_reconnect = callback

    def _tell_reconnected(self) -> None:
        """For the adapters: the connection is back (see ``on_reconnect``)."""
        callback = self._on_reconnect
        if callback is None:
            return
        try:
            callback()
        except Exception:  # never into the broker client's reconnection
            _log.warning("a reconnection callback failed", exc_info=True)

    # -- caller side -------------------------------------------------------------------

    @abstractmethod
    async def publish_task(self, agent: str, data: bytes) -> None:
        """Queue one task message for whichever worker serves ``agent``."""

    @abstractmethod
    async def open_replies(self, caller: str, handler: ReplyHandler) -> str:
        """Start receiving replies addressed to ``caller``; returns the reply address."""

    # -- worker side -------------------------------------------------------------------

    @abstractmethod
    async def publish_reply(self, address: str, data: bytes) -> None:
        """Send a result or event to the caller listening at ``address``."""

    async def settle(self, address: str, data: bytes, delivery: Delivery) -> None:
        """Send a task's result (``data``) to the caller at ``address``, then acknowledge
        the task's message (``delivery``): never the acknowledgement without the result.

        Raises (the result was not sent, nor the message acknowledged) if the broker did
        not take the result; a failed acknowledgement is logged, not raised (the task is
        delivered again, and its caller drops the second result). Adapters that can do
        both in one round trip do."""
        await self.publish_reply(address, data)
        try:
            await delivery.ack()
        except Exception:
            _log.warning("acknowledging a task on %s failed", delivery.channel, exc_info=True)

    @abstractmethod
    async def consume(
        self, agents: Sequence[str], handler: TaskHandler, *, prefetch: int, consumer: str
    ) -> None:
        """Start taking tasks for ``agents`` (at most ``prefetch`` unsettled at a time)."""

    @abstractmethod
    async def stop_consuming(self) -> None:
        """Take no more tasks (those already taken are still settled by the worker)."""

    # -- dead letters ------------------------------------------------------------------

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        """Keep ``letter`` in the namespace's dead-letter store (durably, where the broker
        stores anything); returns once stored."""
        raise NotAvailableError(f"{type(self).__name__} keeps no dead letters")

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        """The newest ``limit`` dead letters, newest first, each with its ``id``."""
        raise NotAvailableError(f"{type(self).__name__} keeps no dead letters")

    async def replay_dead_letters(
        self, ids: Sequence[str] | None, *, deadline_in: float = DEFAULT_REPLAY_DEADLINE
    ) -> list[DeadLetter]:
        """Queue the dead letters ``ids`` (``None``: all) again on their agent's task
        channel, oldest first (as ``replayable`` makes them: a passed deadline is moved to
        ``deadline_in`` seconds from now), and remove them from the store; returns those
        removed (an id not in the store is left out). A copy of a message already queued by
        this call (``DeadLetter.first_copies``) is removed without being queued again."""
        raise NotAvailableError(f"{type(self).__name__} keeps no dead letters")

    async def sweep_unserved(
        self, served: Sequence[str], letter: UnservedLetter
    ) -> list[DeadLetter]:
        """Set aside, as the dead letters ``letter`` makes of them, the messages waiting in
        the task channels of agents no live worker consumes (those of ``served``, the
        sweeping worker's own, are never swept): each is removed from its channel and
        stored once, whichever of the workers sweeping at the same time gets to it. Returns
        those this call stored. A broker that cannot tell whether a channel is consumed
        sweeps nothing."""
        return []

    # -- clean-up ----------------------------------------------------------------------

    async def delete_namespace(self, agents: Sequence[str]) -> None:
        """Delete what the namespace keeps on the broker: the task channels of ``agents``,
        the dead letters, and whatever else of it is stored. For a namespace made to be
        thrown away (``murmur demo --broker``), once its callers and workers have stopped."""
        raise NotAvailableError(f"{type(self).__name__} cannot delete a namespace")

    # -- control (to every worker) -----------------------------------------------------

    @abstractmethod
    async def publish_control(self, data: bytes) -> None:
        """Send a control message to every worker of the namespace listening now."""

    @abstractmethod
    async def open_control(self, handler: ControlHandler) -> None:
        """Start hearing control messages (until ``aclose``), each worker on its own."""


_EXTRA = {"redis": "redis", "nats": "nats", "rabbit": "rabbit", "kafka": "kafka"}
_MODULES = {
    "redis": ("._redis", "RedisAdapter"),
    "nats": ("._nats", "NatsAdapter"),
    "rabbit": ("._rabbit", "RabbitAdapter"),
    "kafka": ("._kafka", "KafkaAdapter"),
    "memory": ("._memory", "MemoryAdapter"),
}


def load_adapter(url: BrokerURL) -> type[BrokerAdapter]:
    """The adapter class for ``url``, imported now (each broker's client only when used).

    Raises:
        MissingDependencyError: FastStream's extra for that broker is not installed.
    """
    module_name, class_name = _MODULES[url.kind]
    try:
        module = importlib.import_module(module_name, __package__)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("murmur"):
            raise
        extra = _EXTRA[url.kind]
        raise MissingDependencyError(
            f"{url.scheme}:// brokers need FastStream's {extra} support ({exc.name} is not "
            f"installed): pip install 'murmur-agents[{extra}]'"
        ) from exc
    adapter: type[BrokerAdapter] = getattr(module, class_name)
    return adapter


def replayable(data: bytes, deadline_in: float) -> bytes:
    """A dead letter's bytes as a replay queues them: a task whose deadline has passed gets
    one ``deadline_in`` seconds from now, so that a worker runs it (a worker answers a task
    past its deadline as timed out without running it, and sweeps an unserved one again);
    anything else (no deadline, one still ahead, unreadable) as it is."""
    try:
        fields = json.loads(data)
        envelope = fields["envelope"]
        deadline = envelope["deadline"]
    except (ValueError, RecursionError, TypeError, KeyError):
        return data
    if not isinstance(deadline, (int, float)) or isinstance(deadline, bool):
        return data
    now = time.time()
    if deadline > now:
        return data
    envelope["deadline"] = now + deadline_in
    return json.dumps(fields).encode()


def safe_name(name: str) -> str:
    """``name`` with only ``[A-Za-z0-9-]`` kept and every other byte spelled ``_xx`` (hex),
    so it is a valid Redis key part, NATS subject token, RabbitMQ queue name and Kafka
    topic name alike, and distinct names stay distinct."""
    return "".join(
        ch
        if ch.isascii() and (ch.isalnum() or ch == "-")
        else "".join(f"_{b:02x}" for b in ch.encode())
        for ch in name
    )


def unsafe_name(name: str) -> str:
    """``safe_name``'s inverse (a name ``safe_name`` did not make comes back as is)."""
    out = bytearray()
    i = 0
    while i < len(name):
        code = name[i + 1 : i + 3]
        if name[i] == "_" and len(code) == 2 and all(c in "0123456789abcdef" for c in code):
            out.append(int(code, 16))
            i += 3
        else:
            out += name[i].encode()
            i += 1
    return out.decode(errors="replace")
