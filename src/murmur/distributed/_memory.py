"""``memory://``: an in-process broker, for demos and tests.

Callers and workers in one process share a hub per URL (``memory://`` and
``memory://name`` are different hubs). They may run on different event loops (a Trio
caller's helper loop, a worker's): deliveries cross loops with ``call_soon_threadsafe``.
Nothing survives the process; a task taken by a worker that stops without settling it is
queued again (counted as one more delivery). Dead letters are kept in the hub, in order.
A channel is unserved while no worker consumes it (its tasks wait in the hub's backlog).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._cancellation import cancel_and_wait
from ._adapter import (
    DEFAULT_REPLAY_DEADLINE,
    BrokerAdapter,
    ControlHandler,
    DeadLetter,
    ReplyHandler,
    TaskHandler,
    UnservedLetter,
    replayable,
)

__all__ = ["MemoryAdapter"]


#: A queued task message: its channel, bytes, and how many times it was delivered before.
_Item = tuple[str, bytes, int]


@dataclass(eq=False)
class _Consumer:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[_Item]
    unsettled: dict[int, tuple[str, bytes]] = field(default_factory=dict)


class _Hub:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.backlog: dict[str, deque[tuple[bytes, int]]] = {}
        self.consumers: dict[str, list[_Consumer]] = {}
        self.turn = itertools.count()
        self.replies: dict[str, tuple[asyncio.AbstractEventLoop, ReplyHandler]] = {}
        self.dead: dict[str, DeadLetter] = {}
        self.dead_ids = itertools.count(1)
        #: Everyone hearing the control channel, by adapter.
        self.controls: dict[int, tuple[asyncio.AbstractEventLoop, ControlHandler]] = {}

    def put(self, channel: str, data: bytes, *, front: bool = False, delivered: int = 0) -> None:
        with self.lock:
            consumers = self.consumers.get(channel)
            if consumers:
                consumer = consumers[next(self.turn) % len(consumers)]
                item = (channel, data, delivered)
                consumer.loop.call_soon_threadsafe(consumer.queue.put_nowait, item)
                return
            backlog = self.backlog.setdefault(channel, deque())
            if front:
                backlog.appendleft((data, delivered))
            else:
                backlog.append((data, delivered))

    def attach(self, channels: Sequence[str], consumer: _Consumer) -> None:
        with self.lock:
            for channel in channels:
                self.consumers.setdefault(channel, []).append(consumer)
                backlog = self.backlog.pop(channel, deque())
                while backlog:
                    consumer.queue.put_nowait((channel, *backlog.popleft()))

    def detach(self, consumer: _Consumer) -> list[_Item]:
        with self.lock:
            for consumers in self.consumers.values():
                if consumer in consumers:
                    consumers.remove(consumer)
        left: list[_Item] = []
        while not consumer.queue.empty():
            left.append(consumer.queue.get_nowait())
        return left


_hubs: dict[str, _Hub] = {}
_hubs_lock = threading.Lock()


def _hub(name: str) -> _Hub:
    with _hubs_lock:
        hub = _hubs.get(name)
        if hub is None:
            hub = _hubs[name] = _Hub()
        return hub


class _MemoryDelivery:
    __slots__ = ("_adapter", "_channel", "_data", "_settled", "deliveries")

    def __init__(self, adapter: MemoryAdapter, channel: str, data: bytes, before: int) -> None:
        self._adapter = adapter
        self._channel = channel
        self._data = data
        self._settled = False
        #: How many times delivered (see ``Delivery.deliveries``), this time included.
        self.deliveries = before + 1

    @property
    def channel(self) -> str:
        return self._channel

    async def ack(self) -> None:
        self._settled = True
        self._adapter._unsettled.discard(self)

    async def nack(self) -> None:
        if not self._settled:
            self._settled = True
            self._adapter._unsettled.discard(self)
            hub = self._adapter._hub
            hub.put(self._channel, self._data, front=True, delivered=self.deliveries)


class MemoryAdapter(BrokerAdapter):
    """The in-process hub named by the URL's host part."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._hub = _hub(f"{self.url.redacted.partition('://')[2]}|{self.namespace}")
        self._consumer: _Consumer | None = None
        self._pump: asyncio.Task[None] | None = None
        self._reply_address: str | None = None
        self._unsettled: set[_MemoryDelivery] = set()

    async def connect(self) -> None:
        return None

    async def aclose(self) -> None:
        await self.stop_consuming()
        for delivery in list(self._unsettled):
            await delivery.nack()
        if self._reply_address is not None:
            with self._hub.lock:
                self._hub.replies.pop(self._reply_address, None)
            self._reply_address = None
        with self._hub.lock:
            self._hub.controls.pop(id(self), None)

    async def publish_task(self, agent: str, data: bytes) -> None:
        self._hub.put(self.task_channel(agent), data)

    async def open_replies(self, caller: str, handler: ReplyHandler) -> str:
        address = self.reply_channel(caller)
        with self._hub.lock:
            self._hub.replies[address] = (asyncio.get_running_loop(), handler)
        self._reply_address = address
        return address

    async def publish_reply(self, address: str, data: bytes) -> None:
        with self._hub.lock:
            target = self._hub.replies.get(address)
        if target is None:
            return  # the caller is gone: nobody to tell (as a broker would keep it unread)
        _call(*target, data)

    async def publish_control(self, data: bytes) -> None:
        with self._hub.lock:
            targets = list(self._hub.controls.values())
        for loop, handler in targets:
            _call(loop, handler, data)

    async def open_control(self, handler: ControlHandler) -> None:
        with self._hub.lock:
            self._hub.controls[id(self)] = (asyncio.get_running_loop(), handler)

    async def consume(
        self, agents: Sequence[str], handler: TaskHandler, *, prefetch: int, consumer: str
    ) -> None:
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._consumer = _Consumer(asyncio.get_running_loop(), queue)
        self._hub.attach([self.task_channel(agent) for agent in agents], self._consumer)

        async def pump() -> None:
            while True:
                channel, data, before = await queue.get()
                delivery = _MemoryDelivery(self, channel, data, before)
                self._unsettled.add(delivery)
                await handler(data, delivery)

        # The pump is the adapter's own consumer loop, as FastStream's subscribers have:
        # stopped (cancelled and awaited) in stop_consuming.
        self._pump = asyncio.get_running_loop().create_task(pump())

    async def stop_consuming(self) -> None:
        pump, self._pump = self._pump, None
        await cancel_and_wait(pump)  # its cancellation stays its own; ours propagates
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            for channel, data, before in self._hub.detach(consumer):
                self._hub.put(channel, data, front=True, delivered=before)

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        hub = self._hub
        with hub.lock:
            key = str(next(hub.dead_ids))
            hub.dead[key] = letter.stored_as(key)

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        with self._hub.lock:
            letters = list(self._hub.dead.values())
        return letters[::-1][:limit]

    async def replay_dead_letters(
        self, ids: Sequence[str] | None, *, deadline_in: float = DEFAULT_REPLAY_DEADLINE
    ) -> list[DeadLetter]:
        hub = self._hub
        with hub.lock:
            chosen = list(hub.dead) if ids is None else [i for i in hub.dead if i in set(ids)]
            letters = [hub.dead.pop(key) for key in chosen]
        for letter, first in DeadLetter.first_copies(letters):
            if first:
                await self.publish_task(letter.agent, replayable(letter.data, deadline_in))
        return letters

    async def sweep_unserved(
        self, served: Sequence[str], letter: UnservedLetter
    ) -> list[DeadLetter]:
        hub = self._hub
        mine = {self.task_channel(agent) for agent in served}
        swept: list[DeadLetter] = []
        with hub.lock:
            for channel, backlog in hub.backlog.items():
                if channel in mine or hub.consumers.get(channel):
                    continue
                agent = self.agent_of(channel)
                kept: deque[tuple[bytes, int]] = deque()
                for data, delivered in backlog:
                    made = letter(data, agent, delivered)
                    if made is None:
                        kept.append((data, delivered))
                        continue
                    key = str(next(hub.dead_ids))
                    hub.dead[key] = made.stored_as(key)
                    swept.append(hub.dead[key])
                backlog.clear()
                backlog.extend(kept)
        return swept


def _call(loop: asyncio.AbstractEventLoop, handler: ReplyHandler, data: bytes) -> None:
    """``handler(data)`` on ``loop``: now if it is this thread's, else as soon as it can."""
    if loop is asyncio.get_running_loop():
        handler(data)
    elif not loop.is_closed():
        loop.call_soon_threadsafe(handler, data)
