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
* Control messages (cancellations) go to one per-namespace control channel that every
  worker hears (a broadcast, not a competing queue); nothing there is stored for a worker
  that was not listening.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from ..errors import MissingDependencyError
from ._url import BrokerURL

__all__ = [
    "DEFAULT_NAMESPACE",
    "NO_LOGGER",
    "BrokerAdapter",
    "ControlHandler",
    "Delivery",
    "ReplyHandler",
    "TaskHandler",
    "load_adapter",
    "safe_name",
]

#: Prefix of every stream, subject, queue and topic Murmur creates (``MURMUR_NAMESPACE``).
DEFAULT_NAMESPACE = "murmur"


class Delivery(Protocol):
    """One received task message, to be settled once its result is published."""

    #: How many times the broker has delivered this message, this time included (1: the
    #: first delivery); where a broker cannot tell, 1.
    deliveries: int

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


class BrokerAdapter(ABC):
    """Connects to one broker; the caller side and the worker side of the same channels.

    Args:
        url: The broker's URL (``url.secret`` goes to the client, never into messages).
        namespace: Prefix of every channel name, so several apps (or test runs) can share
            one broker.
    """

    def __init__(self, url: BrokerURL, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.url = url
        self.namespace = namespace

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

    # -- lifecycle ---------------------------------------------------------------------

    @abstractmethod
    async def connect(self) -> None:
        """Open the connection; raises if the broker cannot be reached."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop consuming, delete this caller's reply channel, close the connection."""

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

    @abstractmethod
    async def consume(
        self, agents: Sequence[str], handler: TaskHandler, *, prefetch: int, consumer: str
    ) -> None:
        """Start taking tasks for ``agents`` (at most ``prefetch`` unsettled at a time)."""

    @abstractmethod
    async def stop_consuming(self) -> None:
        """Take no more tasks (those already taken are still settled by the worker)."""

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
