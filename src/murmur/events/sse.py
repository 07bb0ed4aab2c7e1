"""SSEEventEmitter: the live event stream as Server-Sent Events, over a plain ASGI app.

Each event gets an id (1, 2, 3, ... per emitter) and is kept in a bounded replay buffer. A
subscription (an HTTP client of ``emitter.app``, or an ``emitter.subscribe()`` iterator) has
its own filters and its own bounded queue. ``emit()`` only appends to those queues: it never
waits for a consumer, never does I/O and never raises because of one.

Backpressure: a subscription whose queue is full when an event arrives is dropped. Its
queued events are discarded and counted as dropped, and its stream ends at once. An HTTP
client then reconnects (``EventSource`` does so by itself) with ``Last-Event-ID`` and gets
what it missed from the replay buffer, so nothing is lost while the replay buffer reaches
back far enough; that is why ``replay`` should be a few times ``client_buffer``.

Threads: ``emit()`` may be called from any thread (the consumers are woken on their own
event loops), so the app can be served from a different thread or loop than the runtime's.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final
from urllib.parse import parse_qs

import anyio
import anyio.lowlevel

from ..errors import InvalidStateError, InvalidValueError
from .types import EventType, RuntimeEvent

__all__ = ["SSEApp", "SSEEventEmitter", "SSESubscription"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: How long a dropped (too slow) HTTP client gets to take the end of its response.
_END_GRACE: Final = 1.0
#: Most events written in one ASGI ``send``.
_SEND_BATCH: Final = 64

_HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    # nginx buffers proxied responses unless told not to.
    (b"x-accel-buffering", b"no"),
]
_HELLO: Final = b": murmur events\n\n"
_KEEPALIVE: Final = b": keep-alive\n\n"


class _Entry:
    """One emitted event with its id; its wire form is built once, on first use."""

    __slots__ = ("_wire", "event", "id")

    def __init__(self, id: int, event: RuntimeEvent) -> None:
        self.id = id
        self.event = event
        self._wire: bytes | None = None

    def wire(self) -> bytes:
        wire = self._wire
        if wire is None:
            # Pydantic's JSON never holds a raw newline, so the data fits one `data:` line.
            wire = self._wire = b"id: %d\nevent: %s\ndata: %s\n\n" % (
                self.id,
                self.event.type.value.encode(),
                self.event.model_dump_json().encode(),
            )
        return wire


def _current_token() -> Any:
    """The running loop's AnyIO token (AnyIO >= 4.11), for waking it from another thread."""
    current_token = getattr(anyio.lowlevel, "current_token", None)
    return None if current_token is None else current_token()


class _Waiter:
    """A one-shot ``anyio.Event`` that may be set from any thread."""

    __slots__ = ("_event", "_thread", "_token")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._thread = threading.get_ident()
        self._token = _current_token()

    def set(self) -> None:
        if threading.get_ident() == self._thread:
            self._event.set()
            return
        token = self._token
        if token is None:
            return  # AnyIO < 4.11: the waiter notices at its next wake-up
        # If that loop has finished, nobody is waiting any more.
        with contextlib.suppress(Exception):
            token.backend_class.run_sync_soon(self._event.set, (), token.native_token)

    async def wait(self) -> None:
        await self._event.wait()


def _discard(lock: threading.Lock, waiters: list[_Waiter], waiter: _Waiter) -> None:
    """Forget ``waiter`` if it is still listed (a wait that ended without being woken)."""
    with lock, contextlib.suppress(ValueError):
        waiters.remove(waiter)


def _wake_all(waiters: list[_Waiter]) -> None:
    for waiter in waiters:
        waiter.set()


def _as_set(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset((value,) if isinstance(value, str) else value)


def _parse_types(
    values: EventType | str | Iterable[EventType | str] | None,
) -> frozenset[EventType] | None:
    """Event types by value (``task.failed``) or name (``TASK_FAILED``), comma-separated too."""
    if values is None:
        return None
    if isinstance(values, str):
        values = (values,)
    types: set[EventType] = set()
    for value in values:
        for part in str(value).split(","):
            name = part.strip()
            if not name:
                continue
            try:
                types.add(EventType(name))
            except ValueError:
                try:
                    types.add(EventType[name.upper()])
                except KeyError:
                    raise InvalidValueError(f"unknown event type {name!r}") from None
    return frozenset(types)


class SSESubscription:
    """One consumer of an ``SSEEventEmitter``: an async iterator of ``RuntimeEvent``.

    Made by ``SSEEventEmitter.subscribe()`` (and by the ASGI app, one per HTTP client). It
    is registered from the moment it is made; ``close()`` it (or use it as an async context
    manager) when done. Iteration ends when the subscription is closed, when the emitter is
    closed (after the queued events), or at once when it overflows (``overflowed``).

    Attributes:
        types: Event types let through (``None``: all).
        agents: Agent names let through (``None``: all).
        trace_ids: Trace ids let through (``None``: all).
        buffer: How many live events may wait in its queue before it is dropped.
        client: The HTTP client's ``(host, port)``, for subscriptions of the ASGI app.
        last_event_id: Id of the last event handed out; before the first, the id it joined
            (or resumed) after. Subscribe again with it to resume.
        delivered: Events handed out so far.
        dropped: Events that matched but were discarded when it overflowed.
        resume_gap: Events (of any type) that had already left the replay buffer when it
            resumed from ``last_event_id``: lost for this consumer.
    """

    def __init__(
        self,
        emitter: SSEEventEmitter,
        *,
        types: frozenset[EventType] | None,
        agents: frozenset[str] | None,
        trace_ids: frozenset[str] | None,
        buffer: int,
    ) -> None:
        self.types = types
        self.agents = agents
        self.trace_ids = trace_ids
        self.buffer = buffer
        self.client: tuple[str, int] | None = None
        self.last_event_id = 0
        self.delivered = 0
        self.dropped = 0
        self.resume_gap = 0
        self._lock = emitter._lock
        self._emitter = emitter
        self._backlog: deque[_Entry] = deque()  # replayed on resume; not bounded by `buffer`
        self._pending: deque[_Entry] = deque()
        self._waiter: _Waiter | None = None
        self._closed_waiters: list[_Waiter] = []
        self._closed = False
        self._overflowed = False

    @property
    def closed(self) -> bool:
        """Whether no more events will be added (queued ones may still be handed out)."""
        return self._closed

    @property
    def overflowed(self) -> bool:
        """Whether it was dropped for falling ``buffer`` events behind."""
        return self._overflowed

    def matches(self, event: RuntimeEvent) -> bool:
        """Whether ``event`` passes this subscription's filters."""
        return (
            (self.types is None or event.type in self.types)
            and (self.agents is None or event.agent in self.agents)
            and (self.trace_ids is None or event.trace_id in self.trace_ids)
        )

    def close(self) -> None:
        """Stop receiving events and discard the queued ones; idempotent."""
        with self._lock:
            self._backlog.clear()
            self._pending.clear()
            waiters = self._end()
            self._emitter._forget(self)
        _wake_all(waiters)

    async def wait_closed(self) -> None:
        """Wait until the subscription is closed (by its consumer, the emitter or overflow)."""
        with self._lock:
            if self._closed:
                return
            waiter = _Waiter()
            self._closed_waiters.append(waiter)
        try:
            await waiter.wait()
        finally:
            _discard(self._lock, self._closed_waiters, waiter)  # when the wait was cancelled

    def _end(self) -> list[_Waiter]:
        """Mark it closed (lock held); the waiters to wake once the lock is released."""
        if self._closed:
            return []
        self._closed = True
        waiters = self._closed_waiters
        self._closed_waiters = []
        if self._waiter is not None:
            waiters.append(self._waiter)
            self._waiter = None
        return waiters

    def _overflow(self) -> list[_Waiter]:
        """Drop it (lock held): discard its queue and count what it will never receive."""
        self.dropped += len(self._pending) + 1
        self._pending.clear()
        self._backlog.clear()
        self._overflowed = True
        return self._end()

    async def _take(self, limit: int) -> list[_Entry]:
        """Up to ``limit`` queued entries, waiting for one; ``[]`` once it has ended."""
        while True:
            with self._lock:
                taken: list[_Entry] = []
                for queue in (self._backlog, self._pending):
                    while queue and len(taken) < limit:
                        taken.append(queue.popleft())
                if taken:
                    self.delivered += len(taken)
                    self.last_event_id = taken[-1].id
                    return taken
                if self._closed:
                    return taken
                waiter = self._waiter = _Waiter()
            await waiter.wait()

    def __aiter__(self) -> SSESubscription:
        return self

    async def __anext__(self) -> RuntimeEvent:
        await anyio.lowlevel.checkpoint_if_cancelled()
        taken = await self._take(1)
        if not taken:
            raise StopAsyncIteration
        return taken[0].event

    async def __aenter__(self) -> SSESubscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "overflowed" if self._overflowed else "closed" if self._closed else "open"
        return (
            f"<SSESubscription {state} delivered={self.delivered} dropped={self.dropped} "
            f"last_event_id={self.last_event_id}>"
        )


class SSEEventEmitter:
    """Serves the runtime's events as Server-Sent Events to any number of clients.

    Mount ``emitter.app`` (a plain ASGI app) in any ASGI server or framework, or read the
    stream in-process with ``emitter.subscribe()``. An HTTP client may filter with query
    parameters ``type`` (repeatable or comma-separated; ``task.failed`` or ``TASK_FAILED``),
    ``agent`` and ``trace_id`` (both repeatable), and resume with the ``Last-Event-ID``
    header (or a ``last_event_id`` query parameter; ``0`` replays the whole buffer).

    Args:
        replay: How many recent events are kept for clients that resume (0: none).
        client_buffer: How many events may wait for one client before it is dropped.
        path: Serve only this path (relative to the mount point); ``None``: any path.
        keepalive: Seconds of silence after which a comment is sent to keep proxies from
            closing the connection; ``None``: never.
    """

    def __init__(
        self,
        *,
        replay: int = 1000,
        client_buffer: int = 256,
        path: str | None = None,
        keepalive: float | None = 15.0,
    ) -> None:
        if replay < 0:
            raise InvalidValueError("replay must be >= 0")
        if client_buffer < 1:
            raise InvalidValueError("client_buffer must be >= 1")
        if keepalive is not None and keepalive <= 0:
            raise InvalidValueError("keepalive must be > 0 or None")
        if path is not None and not path.startswith("/"):
            raise InvalidValueError("path must start with '/'")
        self.replay = replay
        self.client_buffer = client_buffer
        self.path = path
        self.keepalive = keepalive
        self._route = None if path is None else path.rstrip("/") or "/"
        #: Events discarded from overflowing subscriptions, in total.
        self.dropped = 0
        #: Subscriptions dropped for falling too far behind.
        self.dropped_subscriptions = 0
        self._lock = threading.Lock()
        self._replay: deque[tuple[int, RuntimeEvent]] = deque(maxlen=replay)
        # Weak, so an iterator abandoned without close() goes with its last reference; a
        # tuple, replaced (never changed) under the lock, so emit() iterates it cheaply.
        self._subscriptions: tuple[weakref.ref[SSESubscription], ...] = ()
        self._subscriber_waiters: list[_Waiter] = []
        self._last_id = 0
        self._closed = False
        #: The ASGI application serving the stream.
        self.app = SSEApp(self)

    @property
    def last_event_id(self) -> int:
        """Id of the latest event (0 before the first)."""
        return self._last_id

    @property
    def subscriptions(self) -> tuple[SSESubscription, ...]:
        """The open subscriptions (HTTP clients and iterators)."""
        with self._lock:
            return self._live()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    async def emit(self, event: RuntimeEvent) -> None:
        """Queue ``event`` for every matching subscription; never waits."""
        self.emit_nowait(event)

    def emit_nowait(self, event: RuntimeEvent) -> None:
        """``emit()`` for synchronous code and other threads."""
        with self._lock:
            if self._closed:
                return
            self._last_id = event_id = self._last_id + 1
            # The replay buffer keeps (id, event) pairs: with nobody listening, this is all.
            self._replay.append((event_id, event))
            if not self._subscriptions:
                return
            woken = self._deliver(event_id, event)
        _wake_all(woken)

    def _deliver(self, event_id: int, event: RuntimeEvent) -> list[_Waiter]:
        """Queue the event for the matching subscriptions (lock held); the waiters to wake."""
        woken: list[_Waiter] = []
        overflowed: list[SSESubscription] = []
        # One entry shared by every subscription, so its wire form is rendered once.
        entry: _Entry | None = None
        stale = False
        for ref in self._subscriptions:
            sub = ref()
            if sub is None:
                stale = True
                continue
            if not sub.matches(event):
                continue
            if len(sub._pending) >= sub.buffer:
                overflowed.append(sub)
                continue
            if entry is None:
                entry = _Entry(event_id, event)
            sub._pending.append(entry)
            waiter = sub._waiter
            if waiter is not None:
                sub._waiter = None
                woken.append(waiter)
        for sub in overflowed:
            before = sub.dropped
            woken += sub._overflow()
            self._forget(sub)
            self.dropped += sub.dropped - before
            self.dropped_subscriptions += 1
        if stale:
            self._subscriptions = self._live_refs()
        return woken

    def subscribe(
        self,
        *,
        types: EventType | str | Iterable[EventType | str] | None = None,
        agent: str | Iterable[str] | None = None,
        trace_id: str | Iterable[str] | None = None,
        last_event_id: int | None = None,
        buffer: int | None = None,
    ) -> SSESubscription:
        """A new subscription, registered at once: ``async for event in ...``.

        One task at a time should iterate a subscription.

        Args:
            types: Only these event types (values or names).
            agent: Only events of this agent (or these agents).
            trace_id: Only events of this trace (or these traces).
            last_event_id: Resume after this id: the replay buffer's later matching events
                come first (all of them if the id is newer than any, as after a restart).
            buffer: Its queue bound; default ``client_buffer``.

        Raises:
            ValueError: An unknown event type.
            RuntimeError: The emitter is closed.
        """
        limit = self.client_buffer if buffer is None else buffer
        if limit < 1:
            raise InvalidValueError("buffer must be >= 1")
        sub = SSESubscription(
            self,
            types=_parse_types(types),
            agents=_as_set(agent),
            trace_ids=_as_set(trace_id),
            buffer=limit,
        )
        with self._lock:
            if self._closed:
                raise InvalidStateError("this SSEEventEmitter is closed")
            if last_event_id is None:
                sub.last_event_id = self._last_id
            else:
                self._seed(sub, last_event_id)
            self._subscriptions = (*self._live_refs(), weakref.ref(sub))
            woken = self._subscriber_waiters
            self._subscriber_waiters = []
        _wake_all(woken)
        return sub

    def _seed(self, sub: SSESubscription, last_event_id: int) -> None:
        """Queue the replayed events a resuming subscription missed (lock held)."""
        replay = self._replay
        if last_event_id > self._last_id:
            # An id this emitter never gave out: the client saw an earlier process.
            last_event_id = 0
        sub.last_event_id = last_event_id
        oldest = replay[0][0] if replay else self._last_id + 1
        sub.resume_gap = max(0, oldest - last_event_id - 1)
        sub._backlog.extend(
            _Entry(event_id, event)
            for event_id, event in replay
            if event_id > last_event_id and sub.matches(event)
        )

    def _live(self) -> tuple[SSESubscription, ...]:
        """The subscriptions still referenced (lock held)."""
        return tuple(sub for ref in self._subscriptions if (sub := ref()) is not None)

    def _live_refs(self) -> tuple[weakref.ref[SSESubscription], ...]:
        return tuple(ref for ref in self._subscriptions if ref() is not None)

    def _forget(self, sub: SSESubscription) -> None:
        """Unregister ``sub`` (lock held); also drops the references of collected ones."""
        self._subscriptions = tuple(
            ref for ref in self._subscriptions if (live := ref()) is not None and live is not sub
        )

    async def wait_for_subscribers(self, count: int = 1) -> None:
        """Wait until at least ``count`` subscriptions are open (or the emitter is closed)."""
        while True:
            with self._lock:
                if self._closed or len(self._live()) >= count:
                    return
                waiter = _Waiter()
                self._subscriber_waiters.append(waiter)
            try:
                await waiter.wait()
            finally:
                _discard(self._lock, self._subscriber_waiters, waiter)  # if it was cancelled

    def close(self) -> None:
        """End every stream (after its queued events) and refuse new ones; idempotent.

        Call it before shutting the server down: servers wait for open responses to end.
        """
        woken: list[_Waiter] = []
        with self._lock:
            self._closed = True
            for sub in self._live():
                woken += sub._end()
            self._subscriptions = ()
            woken += self._subscriber_waiters
            self._subscriber_waiters = []
        _wake_all(woken)

    def __repr__(self) -> str:
        return (
            f"<SSEEventEmitter subscriptions={len(self.subscriptions)} "
            f"last_event_id={self._last_id} dropped={self.dropped}>"
        )


class SSEApp:
    """The ASGI application of an ``SSEEventEmitter`` (its ``app``); no framework needed.

    ``GET`` streams; ``HEAD`` answers the headers only; other methods get 405, other paths
    (when the emitter has a ``path``) 404, bad query parameters 400, a closed emitter 503.
    Lifespan messages are acknowledged, so it can be served on its own.
    """

    def __init__(self, emitter: SSEEventEmitter) -> None:
        self.emitter = emitter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        emitter = self.emitter
        if emitter._route is not None and _route_path(scope) != emitter._route:
            await _plain(send, 404, b"not found\n")
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await _plain(send, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")])
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            sub = emitter.subscribe(
                types=query.get("type"),
                agent=query.get("agent"),
                trace_id=query.get("trace_id"),
                last_event_id=_resume_point(scope, query),
            )
        except ValueError as error:
            await _plain(send, 400, f"{error}\n".encode())
            return
        except RuntimeError:
            await _plain(send, 503, b"event stream closed\n")
            return
        client = scope.get("client")
        if client:
            sub.client = (str(client[0]), int(client[1]))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            if method == "HEAD":
                await send({"type": "http.response.body", "body": b""})
                return
            await send({"type": "http.response.body", "body": _HELLO, "more_body": True})
            if await self._stream(sub, receive, send) or sub.overflowed:
                # A client that stopped reading may never take this; then the server cuts
                # the connection once we return.
                with anyio.move_on_after(_END_GRACE):
                    await send({"type": "http.response.body", "body": b""})
        except OSError:
            pass  # ASGI servers raise an OSError from send() once the client has gone
        finally:
            sub.close()

    async def _stream(self, sub: SSESubscription, receive: Receive, send: Send) -> bool:
        """Send events until the stream ends; whether it ended normally (emitter closed)."""
        keepalive = math.inf if self.emitter.keepalive is None else self.emitter.keepalive
        ended = False
        async with anyio.create_task_group() as tg:
            scope = tg.cancel_scope
            tg.start_soon(_cancel_on_disconnect, receive, scope)
            # Overflow must also stop a send() that is stuck on a client that stopped reading.
            tg.start_soon(_cancel_on_overflow, sub, scope)
            try:
                while True:
                    entries = None
                    with anyio.move_on_after(keepalive):
                        entries = await sub._take(_SEND_BATCH)
                    if entries is None:
                        body = _KEEPALIVE
                    elif entries:
                        body = b"".join(entry.wire() for entry in entries)
                    else:
                        ended = not sub.overflowed
                        break
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            except OSError:
                pass  # the client has gone (caught here: a task group would wrap it)
            finally:
                scope.cancel()
        return ended


def _route_path(scope: Scope) -> str:
    """The request path below the mount point, without a trailing slash."""
    path: str = scope.get("path", "/")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.rstrip("/") or "/"


def _resume_point(scope: Scope, query: dict[str, list[str]]) -> int | None:
    """``Last-Event-ID`` (or the ``last_event_id`` query parameter), if a valid id."""
    raw: str | None = None
    for name, value in scope.get("headers", ()):
        if name.lower() == b"last-event-id":
            raw = value.decode("latin-1")
    if raw is None and query.get("last_event_id"):
        raw = query["last_event_id"][-1]
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _cancel_on_overflow(sub: SSESubscription, scope: anyio.CancelScope) -> None:
    await sub.wait_closed()
    if sub.overflowed:
        scope.cancel()


async def _plain(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), *(headers or ())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
