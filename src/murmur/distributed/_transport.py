"""The caller side of distributed mode: attempts published to a broker, results awaited.

``AgentRuntime(broker=URL)`` runs its caller-side stages (spawn depth, budget admission,
retry) here and sends each attempt to whichever worker serves the agent. Replies (the
attempt's events, then its result) come back on this caller's reply channel and are
matched to the waiting attempt by correlation id; a reply nobody waits for (a duplicate,
or one that arrived after its attempt gave up) is dropped.

Broker I/O (FastStream is asyncio-only) runs on the caller's own asyncio loop, or under
Trio on the runtime's helper loop, cancellation crossing both ways.

An attempt whose caller is cancelled tells the workers on the control channel before the
cancellation goes on, in a ``CancelMessage`` sent within ``CANCEL_SEND_TIMEOUT``. A batch
(a ``gather``, a group node's fan-out) cancelled as a whole is revoked by its batch id,
which all its attempts carry, in one message sent before any of them is cancelled
(``revoke_batch``); an attempt cancelled on its own (a single ``run``, a caller-side
stage's timeout) by its correlation id, with the others cancelled at the same time. The
worker running a revoked attempt cancels it; the others are skipped when they reach a
worker. An attempt whose publish failed or timed out may still have reached the broker:
it is revoked too.

A reply can be lost on the way (a core NATS reply sent while its caller reconnects, a
RabbitMQ reply queue gone with its connection, a Redis server that lost its data), and the
task message is settled by then: nothing would run it again. Workers keep the results they
sent lately, so the caller asks for them again (a ``ResendMessage`` on the control channel)
when its broker connection comes back after a loss, and for any attempt that has heard
nothing for ``resend_every`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import sniffio

from .._bridge import AsyncioBridge, HomePortal
from .._cancellation import is_real_cancellation, pending_cancellations
from .._types import ZERO_USAGE, AgentResult
from ..errors import (
    AgentTimeoutError,
    BrokerUnavailableError,
    InvalidStateError,
    InvalidValueError,
    TaskCancelledError,
)
from ..transport.base import Transport
from ._adapter import DEFAULT_NAMESPACE, BrokerAdapter, load_adapter
from ._url import BrokerURL, parse_broker_url, query_secrets
from ._wire import (
    WIRE_VERSION,
    CancelMessage,
    EventMessage,
    ResendMessage,
    ResultMessage,
    TaskMessage,
    WireFormatError,
    _trusted_task_message,
    decode_reply,
    encode,
)

if TYPE_CHECKING:
    from .._envelope import EventSink, TaskEnvelope

__all__ = ["CANCEL_SEND_TIMEOUT", "DEFAULT_REPLY_GRACE", "DEFAULT_RESEND_EVERY", "BrokerTransport"]

_log = logging.getLogger("murmur.distributed")

#: Seconds a caller waits for a result past an attempt's deadline (queueing on the way
#: back, clock skew between machines) before it calls the attempt lost.
DEFAULT_REPLY_GRACE = 5.0
#: Seconds to reach the broker before a call fails with ``BrokerUnavailableError``.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds a cancelled caller spends, at most, telling the workers (its cancellation waits
#: that long at worst).
CANCEL_SEND_TIMEOUT = 1.0
#: Correlation ids in one cancel message, at most.
CANCEL_BATCH = 1000
#: Revoked batches a caller remembers (their attempts being cancelled need no message of
#: their own), at most; the oldest are forgotten first.
_REVOKED_BATCHES_MAX = 1000
#: Seconds a cancel waits for more attempts cancelled with it (again while more come)...
_COLLECT_SECONDS = 0.05
#: ...and at most this long in all.
_COLLECT_MAX = 0.5
#: Seconds an attempt hears nothing (no event, no result) before its caller asks the
#: workers to send its result again, in case it was lost (a worker that sent it lately
#: still has it; see ``Worker``).
DEFAULT_RESEND_EVERY = 60.0
#: Correlation ids in one resend message, at most.
RESEND_BATCH = 1000
#: Seconds an attempt spends, at most, asking for results again.
RESEND_SEND_TIMEOUT = 1.0

#: What a waiting attempt hears: its replies, and when the broker connection came back.
_Reply = ResultMessage | EventMessage | float


class _Quiet:
    """No reply came within a wait (its deadline, or time to ask again)."""


_QUIET = _Quiet()


def _wake_quietly(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Inbox:
    """The replies of one waiting attempt, on the home loop (always asyncio): what a
    memory object stream would do here, at a fraction of its cost on this per-attempt
    path. ``put`` never blocks; once closed, ``get`` drains what came, then gives None
    and ``put`` drops (the attempt stopped waiting)."""

    __slots__ = ("_items", "_waiter", "closed")

    def __init__(self) -> None:
        self._items: deque[_Reply] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    def __bool__(self) -> bool:
        """Whether a reply is waiting to be taken."""
        return bool(self._items)

    def put(self, item: _Reply) -> None:
        if not self.closed:
            self._items.append(item)
            self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, until: float) -> _Reply | _Quiet | None:
        """The next reply, waiting for it until ``until`` (the loop's time; then
        ``_QUIET``); None once closed and drained."""
        while not self._items:
            if self.closed:
                return None
            loop = asyncio.get_running_loop()
            if loop.time() >= until:
                return _QUIET
            waiter = self._waiter = loop.create_future()
            timer = None if until == math.inf else loop.call_at(until, _wake_quietly, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        return self._items.popleft()


def namespace_from_env() -> str:
    """``MURMUR_NAMESPACE`` if set (callers and workers of one app must agree), else the
    default ``murmur``."""
    return os.environ.get("MURMUR_NAMESPACE") or DEFAULT_NAMESPACE


class BrokerTransport(Transport):
    """Sends attempts to workers through a broker; ``AgentRuntime(broker=URL)`` builds one.

    Args:
        broker: The broker URL (``redis://``, ``rediss://``, ``nats://``, ``amqp://``,
            ``amqps://``, ``kafka://`` or ``memory://``).
        namespace: Prefix of the channels; callers and workers must use the same. Default:
            ``MURMUR_NAMESPACE``, else ``murmur``.
        reply_grace: Seconds waited for a result past an attempt's deadline before the
            attempt is reported lost (``AgentTimeoutError``).
        connect_timeout: Seconds to reach the broker.
        resend_every: Seconds an attempt may hear nothing from its worker before the
            workers are asked to send its result again (in case the reply was lost; they
            are asked at once when the broker connection comes back after a loss).
            ``math.inf``: only then.

    Raises:
        ValueError: the URL is malformed or of an unknown scheme.
        ImportError: the broker's FastStream extra is not installed.
    """

    def __init__(
        self,
        broker: str,
        *,
        namespace: str | None = None,
        reply_grace: float = DEFAULT_REPLY_GRACE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        resend_every: float = DEFAULT_RESEND_EVERY,
    ) -> None:
        if (
            isinstance(resend_every, bool)
            or not isinstance(resend_every, (int, float))
            or not resend_every > 0
        ):
            raise InvalidValueError(f"resend_every must be a number > 0, got {resend_every!r}")
        self.url: BrokerURL = parse_broker_url(broker)
        self._adapter_class = load_adapter(self.url)
        self.namespace = namespace or namespace_from_env()
        self.reply_grace = reply_grace
        self.connect_timeout = connect_timeout
        self.resend_every = float(resend_every)
        #: This caller's identity on the broker (its reply channel is named after it).
        self.caller_id = uuid.uuid4().hex[:16]
        self._adapter: BrokerAdapter | None = None
        self._home: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Lock | None = None
        #: When the last connection attempt failed, and why.
        self._connect_failed: tuple[float, str] | None = None
        self._reply_to = ""
        #: Each waiting attempt's replies, and (a float) when the connection came back.
        self._pending: dict[str, _Inbox] = {}
        self._bridge: AsyncioBridge | None = None
        self._closed = False
        #: The attempts waiting for their replies (as ``_pending``), to revoke if cancelled.
        self._waiting: dict[str, _Attempt] = {}
        #: The cancels being collected into one message (on the home loop).
        self._revoking: _Revocation | None = None
        #: The batches revoked as a whole (``revoke_batch``), newest last.
        self._revoked_batches: OrderedDict[str, None] = OrderedDict()

    def __repr__(self) -> str:
        return f"BrokerTransport({self.url.redacted!r}, namespace={self.namespace!r})"

    # -- submit ------------------------------------------------------------------------

    async def submit(self, envelope: TaskEnvelope, events: EventSink) -> AgentResult[Any]:
        if self._closed:
            raise InvalidStateError("this broker transport was closed")
        if sniffio.current_async_library() == "asyncio":
            return await self._submit_home(envelope, events)
        # Trio: broker I/O runs on the helper loop; events come back here to be emitted.
        # Not even handed over if already cancelled (a batch being cancelled may still
        # start attempts): it would be published before the cancellation crossed over.
        await anyio.lowlevel.checkpoint_if_cancelled()
        bridge = self._helper_bridge()
        failure: Exception | None = None
        async with anyio.create_task_group() as task_group:
            sink = _HomeSink(HomePortal(task_group), events)
            try:
                result = await bridge.run(self._submit_home, envelope, sink)
            except Exception as exc:
                failure = exc  # raised below, not wrapped in the task group's ExceptionGroup
            finally:
                task_group.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return result

    async def _submit_home(self, envelope: TaskEnvelope, events: EventSink) -> AgentResult[Any]:
        baseline = pending_cancellations()
        loop = asyncio.get_running_loop()
        adapter = self._adapter
        if adapter is None or self._home is not loop:
            adapter = await self._connected()
        correlation_id = os.urandom(16).hex()
        inbox = self._pending[correlation_id] = _Inbox()
        attempt = self._waiting[correlation_id] = _Attempt(correlation_id, envelope, baseline)
        sent = False
        try:
            message = _trusted_task_message(
                {
                    "version": WIRE_VERSION,
                    "correlation_id": correlation_id,
                    "kind": "task",
                    "envelope": envelope,
                    "reply_to": self._reply_to,
                }
            )
            try:
                data = encode(message)
            except Exception as exc:
                raise InvalidValueError(
                    f"task {envelope.task.task_id} for agent {envelope.agent!r} cannot be sent "
                    f"to a worker: its input or metadata is not JSON-serialisable: {exc}"
                ) from None
            # A batch being cancelled may still start attempts (each is cancelled at its
            # first wait): never publish one then.
            await anyio.lowlevel.checkpoint_if_cancelled()
            try:
                sent = True  # perhaps, if cancelled midway
                # The adapter reconnects through an outage; the attempt's deadline bounds it.
                # A revoke of its batch cuts it short (``_revoke_batch_home``): perhaps sent,
                # then, and revoked; the batch's cancellation is on its way here. One scope
                # for both (this runs for every attempt): the revoke says it cut it.
                try:
                    until = loop.time() + _until(envelope.deadline)
                    with anyio.CancelScope(deadline=until) as cut:
                        attempt.publishing = cut
                        await adapter.publish_task(envelope.agent, data)
                finally:
                    attempt.publishing = None
                    if attempt.unwound is not None:
                        attempt.unwound.set()
                if cut.cancelled_caught and attempt.unwound is None:
                    raise TimeoutError  # its deadline came first
            except Exception as exc:
                # It may have reached the broker all the same (the connection dropped after
                # the bytes went out): no worker is to run it now.
                with anyio.CancelScope(shield=True):
                    await self._revoke(adapter, attempt, "its publish failed")
                if isinstance(exc, TimeoutError):
                    raise BrokerUnavailableError(
                        f"broker {self.url.redacted}: unreachable: task "
                        f"{envelope.task.task_id} for agent {envelope.agent!r} could not be "
                        "sent before its deadline"
                    ) from None
                raise self._unavailable("publishing a task failed", exc) from None
            if attempt.cancelling():
                # Cancelled while it was being sent. Delivered here if still pending; but
                # a library may have swallowed it (redis-py can, as a reply arrives), and
                # then nothing would ever wake this attempt.
                await anyio.lowlevel.checkpoint()
                with anyio.CancelScope(shield=True):
                    await self._revoke(adapter, attempt)
                return _revoked(envelope)
            wait = _until(envelope.deadline, self.reply_grace)
            give_up = loop.time() + wait
            while True:
                # No scope (this runs for every attempt): the inbox's own timer ends the
                # wait at the deadline, or when it is time to ask again for a result that
                # may have been lost.
                reply = await inbox.get(min(give_up, loop.time() + self.resend_every))
                if reply is None:
                    break  # closed
                if isinstance(reply, _Quiet):
                    if loop.time() >= give_up:
                        if inbox:
                            continue  # it came just as the wait ended: taken, not lost
                        return _lost(envelope, wait, self.reply_grace)
                    # Nothing for a while: its result may have been lost.
                    quiet = time.monotonic() - self.resend_every / 2
                    with anyio.CancelScope(deadline=give_up):
                        await self._ask_again(adapter, quiet)
                elif isinstance(reply, float):
                    # The connection came back: replies may have been lost meanwhile.
                    with anyio.CancelScope(deadline=give_up):
                        await self._ask_again(adapter, reply)
                elif isinstance(reply, ResultMessage):
                    return reply.result
                else:
                    with anyio.CancelScope(deadline=give_up):
                        await events.emit(_with_worker(reply))
            if attempt.batch is not None:
                # Revoked as cancelled, and yet not cancelled: its cancellation was lost
                # on the way (a library swallowed it). Nothing will answer it now.
                return _revoked(envelope)
            # The inbox was closed: this transport was closed under the attempt.
            raise InvalidStateError("the runtime was closed while the task was running")
        except BaseException as exc:
            if sent and is_real_cancellation(exc, baseline):
                # The caller gave up on it: so should the worker (or the queue).
                with anyio.CancelScope(shield=True):
                    await self._revoke(adapter, attempt)
            raise
        finally:
            del self._pending[correlation_id]
            del self._waiting[correlation_id]
            inbox.close()

    async def _revoke(
        self, adapter: BrokerAdapter, attempt: _Attempt, reason: str = "cancelled by its caller"
    ) -> None:
        """Tell the workers an attempt is cancelled, in one message with the attempts
        cancelled together with it; returns once it is sent (or could not be, within
        ``CANCEL_SEND_TIMEOUT``). Runs shielded, on the home loop. Nothing to do for an
        attempt whose batch was revoked as a whole (``revoke_batch``).

        The attempts of a cancelled batch reach this one by one, over a while (a thousand
        take a good part of a second): the first collects the others, those whose task
        was cancelled already (and has yet to get here) included, so the workers hear of
        them all at once, before a running one's slot could take a queued one."""
        if attempt.batch is None and attempt.batch_id in self._revoked_batches:
            return  # its batch's cancel, sent before it was cancelled, names it
        batch = attempt.batch or self._revoking
        if batch is not None:
            batch.add(attempt)
            await batch.sent.wait()
            return
        batch = self._revoking = _Revocation()
        batch.add(attempt)
        try:
            with anyio.move_on_after(_COLLECT_MAX):
                seen = 0
                while len(batch.ids) != seen:  # until no more join
                    seen = len(batch.ids)
                    for other in self._waiting.values():
                        if other.batch is None and other.cancelling():
                            batch.add(other)
                            # Its cancellation wakes it; if that was lost, this does.
                            self._pending[other.correlation_id].close()
                    await anyio.sleep(_COLLECT_SECONDS)
            self._revoking = None
            await self._send_cancel(adapter, list(batch.ids), batch.until, reason)
        finally:
            if self._revoking is batch:
                self._revoking = None
            batch.sent.set()

    async def revoke_batch(self, batch_id: str) -> None:
        """Tell the workers the batch ``batch_id`` is cancelled, naming it (and the
        attempts of it waiting here, for workers that predate batch ids): they skip its
        queued attempts and cancel its running ones. Its publishes in progress are cut
        short first (within half a second): its attempts are cancelled next (the core's
        ``BatchGuard`` calls this). Returns once sent, or within ``CANCEL_SEND_TIMEOUT``
        more; a failure is logged."""
        if self._closed or self._adapter is None:
            return  # nothing of it was sent
        try:
            if sniffio.current_async_library() == "asyncio":
                await self._revoke_batch_home(batch_id)
            else:
                await self._helper_bridge().run(self._revoke_batch_home, batch_id)
        except Exception as exc:
            _log.warning(
                "could not tell the workers that a batch was cancelled: %s",
                scrub(f"{type(exc).__name__}: {exc}", self.url),
            )

    async def _ask_again(self, adapter: BrokerAdapter, since: float) -> None:
        """Ask the workers to send again the results of the waiting attempts not asked
        about since ``since`` (monotonic; an attempt counts as asked when it starts): one
        message per ``RESEND_BATCH`` of them, within ``RESEND_SEND_TIMEOUT``. The attempt
        that asks first asks for the others too; a failure is logged (the next ask will do).
        """
        now = time.monotonic()
        ids = []
        for attempt in self._waiting.values():
            if attempt.batch is None and attempt.asked <= since:
                attempt.asked = now
                ids.append(attempt.correlation_id)
        if not ids:
            return
        try:
            await _publish_control(
                adapter,
                ids,
                RESEND_BATCH,
                RESEND_SEND_TIMEOUT,
                lambda chunk, _first: ResendMessage(
                    correlation_ids=chunk, reply_to=self._reply_to, caller=self.caller_id
                ),
            )
        except Exception as exc:
            _log.warning(
                "could not ask the workers again for the results of %d task(s): %s",
                len(ids),
                scrub(f"{type(exc).__name__}: {exc}", self.url),
            )

    def _on_reconnect(self) -> None:
        """The broker connection came back (on the home loop): every waiting attempt hears
        when, and the first to wake asks for them all (``_ask_again``)."""
        now = time.monotonic()
        for inbox in self._pending.values():
            inbox.put(now)

    async def _revoke_batch_home(self, batch_id: str) -> None:
        adapter = self._adapter
        if adapter is None or self._home is not asyncio.get_running_loop():
            return
        revoked = self._revoked_batches
        revoked[batch_id] = None
        while len(revoked) > _REVOKED_BATCHES_MAX:
            revoked.popitem(last=False)
        batch = _Revocation()
        cut: list[anyio.Event] = []
        for attempt in self._waiting.values():
            if attempt.batch_id == batch_id and attempt.batch is None:
                batch.add(attempt)
                if attempt.publishing is not None:
                    # Its publish would hold up the cancel (hundreds of them on one
                    # connection take a good while to be confirmed): cut short first.
                    attempt.unwound = anyio.Event()
                    cut.append(attempt.unwound)
                    attempt.publishing.cancel()
        if not batch.ids:
            return  # none of it was sent (or all of it answered)
        with anyio.move_on_after(_COLLECT_MAX):
            for unwound in cut:
                await unwound.wait()
        try:
            reason = "its batch was cancelled"
            await self._send_cancel(adapter, list(batch.ids), batch.until, reason, batch_id)
        finally:
            batch.sent.set()

    async def _send_cancel(
        self,
        adapter: BrokerAdapter,
        ids: list[str],
        until: float | None,
        reason: str,
        batch_id: str | None = None,
    ) -> None:
        """Publish cancels for ``ids`` (and ``batch_id``, in the first) on the control
        channel, within ``CANCEL_SEND_TIMEOUT``; a failure is logged (the workers then
        finish those attempts, and their results are dropped)."""
        try:
            await _publish_control(
                adapter,
                ids,
                CANCEL_BATCH,
                CANCEL_SEND_TIMEOUT,
                lambda chunk, first: CancelMessage(
                    correlation_ids=chunk,
                    batch_ids=(batch_id,) if batch_id is not None and first else (),
                    caller=self.caller_id,
                    reason=reason,
                    until=until,
                ),
            )
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if isinstance(exc, TimeoutError):
                why = f"not sent within {CANCEL_SEND_TIMEOUT:g}s ({why})"
            _log.warning(
                "could not tell the workers that %d task(s) were cancelled (%s): %s",
                len(ids),
                reason,
                scrub(why, self.url),
            )

    def _on_reply(self, data: bytes) -> None:
        """Route one reply to the attempt awaiting it (runs on the home loop, never blocks)."""
        try:
            message = decode_reply(data)
        except WireFormatError as exc:
            _log.warning("dropped a reply that is not a Murmur message: %s", exc)
            return
        if isinstance(message, TaskMessage):
            _log.warning("dropped a task message sent to a reply channel")
            return
        inbox = self._pending.get(message.correlation_id)
        if inbox is not None:  # else a duplicate (delivered twice) or late: answered already
            inbox.put(message)

    # -- connection --------------------------------------------------------------------

    async def _connected(self) -> BrokerAdapter:
        loop = asyncio.get_running_loop()
        adapter = self._adapter
        if adapter is not None and self._home is loop:
            return adapter
        if self._home is not None and self._home is not loop and not self._home.is_closed():
            raise InvalidStateError(
                "this runtime's broker connection lives on another running event loop; "
                "use one runtime per event loop"
            )
        if self._connecting is None or self._home is not loop:
            self._connecting = asyncio.Lock()
            self._home = loop
            self._adapter = None
        asked = time.monotonic()
        async with self._connecting:
            if self._adapter is not None:
                return self._adapter
            failed = self._connect_failed
            if failed is not None and failed[0] >= asked:
                # The connection this call waited for failed: the same answer, at once (not
                # one connect_timeout more for each task of a batch, one after the other).
                raise BrokerUnavailableError(failed[1])
            adapter = self._adapter_class(self.url, namespace=self.namespace)
            try:
                with anyio.fail_after(self.connect_timeout):
                    await adapter.connect()
                    self._reply_to = await adapter.open_replies(self.caller_id, self._on_reply)
                    adapter.on_reconnect(self._on_reconnect)
            except BaseException as exc:
                # Cancelled midway too: what was opened (a subscriber's task) is closed.
                with anyio.CancelScope(shield=True):
                    await _close_quietly(adapter)
                if not isinstance(exc, Exception):
                    raise
                error = self._unavailable("cannot connect", exc)
                self._connect_failed = (time.monotonic(), str(error))
                raise error from None
            self._adapter = adapter
            return adapter

    def _unavailable(self, what: str, exc: BaseException) -> BrokerUnavailableError:
        return BrokerUnavailableError(
            f"broker {self.url.redacted}: {what}: {type(exc).__name__}: {scrub(str(exc), self.url)}"
        )

    def _helper_bridge(self) -> AsyncioBridge:
        bridge = self._bridge
        if bridge is None:
            bridge = self._bridge = AsyncioBridge(name="murmur-broker-bridge")
            weakref.finalize(self, bridge.close)
        return bridge

    async def aclose(self) -> None:
        """Delete this caller's reply channel and close the broker connection."""
        if self._closed:
            return
        self._closed = True
        adapter, self._adapter = self._adapter, None
        bridge, self._bridge = self._bridge, None
        # Shielded: a runtime closed by a cancellation (its `async with` cancelled from
        # outside) still deletes its reply channel and ends its connection and thread.
        with anyio.CancelScope(shield=True):
            try:
                if bridge is not None and sniffio.current_async_library() != "asyncio":
                    await bridge.run(self._shut, adapter)  # on the loop the streams live on
                elif self._home is None or self._home is asyncio.get_running_loop():
                    await self._shut(adapter)
                # else: its loop is gone, and with it the connection and the waiters.
            finally:
                if bridge is not None:
                    await bridge.aclose()

    async def _shut(self, adapter: BrokerAdapter | None) -> None:
        """On the home loop: revoke the attempts still waiting and end them (their results
        come back as errors), then close the connection."""
        if adapter is not None and self._pending:
            await self._send_cancel(adapter, list(self._pending), None, "its caller closed")
        for inbox in list(self._pending.values()):
            inbox.close()
        if adapter is not None:
            await _close_quietly(adapter)


async def _publish_control(
    adapter: BrokerAdapter,
    ids: Sequence[str],
    size: int,
    seconds: float,
    message: Callable[[tuple[str, ...], bool], CancelMessage | ResendMessage],
) -> None:
    """Publish ``message(chunk, first)`` on the control channel for each ``size`` of
    ``ids``, all within ``seconds`` (raises what failed, or ``TimeoutError``)."""
    with anyio.fail_after(seconds):
        for start in range(0, len(ids), size):
            chunk = tuple(ids[start : start + size])
            await adapter.publish_control(encode(message(chunk, not start)))


async def _close_quietly(adapter: BrokerAdapter) -> None:
    try:
        # Not for as long as an unreachable broker is waited for (its adapter reconnects).
        with anyio.fail_after(DEFAULT_CONNECT_TIMEOUT):
            await adapter.aclose()
    except Exception:
        _log.warning("closing the broker connection failed", exc_info=True)


def _until(deadline: float | None, grace: float = 0.0) -> float:
    """Seconds from now to ``deadline`` plus ``grace`` (wall clock); no deadline: forever."""
    if deadline is None:
        return math.inf
    return deadline + grace - time.time()


def scrub(text: str, url: BrokerURL) -> str:
    """``text`` with the URL's password (and the URL itself) replaced by their redacted form."""
    text = text.replace(url.secret, url.redacted)
    authority = url.secret.partition("://")[2].partition("/")[0]
    userinfo = authority.rpartition("@")[0]
    password = userinfo.partition(":")[2]
    if password:
        text = text.replace(password, "***")
    for secret in query_secrets(url):
        text = text.replace(secret, "***")
    return text


def _with_worker(message: EventMessage) -> Any:
    event = message.event
    if message.worker and "worker" not in event.data:
        event = event.model_copy(update={"data": {**event.data, "worker": message.worker}})
    return event


def _revoked(envelope: TaskEnvelope) -> AgentResult[Any]:
    return not_run(
        envelope,
        TaskCancelledError(
            f"agent {envelope.agent!r} attempt {envelope.attempt} (task "
            f"{envelope.task.task_id}) was cancelled: its caller stopped waiting for it"
        ),
    )


def not_run(envelope: TaskEnvelope, error: Exception) -> AgentResult[Any]:
    """The result of an attempt that never ran: ``error``, nothing spent."""
    return AgentResult._build(
        None, error, ZERO_USAGE, envelope.attempt, 0.0, envelope.task.task_id, envelope.agent
    )


def _lost(envelope: TaskEnvelope, waited: float, grace: float) -> AgentResult[Any]:
    error = AgentTimeoutError(
        f"no result for agent {envelope.agent!r} (task {envelope.task.task_id}, attempt "
        f"{envelope.attempt}) by its deadline plus {grace:g}s of grace: no worker serves "
        "this agent, the worker died, or the broker lost the message"
    )
    return AgentResult._build(
        None,
        error,
        ZERO_USAGE,
        envelope.attempt,
        max(0.0, waited),
        envelope.task.task_id,
        envelope.agent,
    )


class _Attempt:
    """An attempt waiting for its reply, as its revocation needs it."""

    __slots__ = (
        "asked",
        "baseline",
        "batch",
        "batch_id",
        "correlation_id",
        "deadline",
        "publishing",
        "task",
        "unwound",
    )

    def __init__(self, correlation_id: str, envelope: TaskEnvelope, baseline: int) -> None:
        self.correlation_id = correlation_id
        self.deadline = envelope.deadline
        #: The batch it belongs to (``TaskEnvelope.batch_id``), if any.
        self.batch_id = envelope.batch_id
        #: The scope of its publish, while it is being published, and (once a revoke cut it
        #: short) what tells the revoke it has ended.
        self.publishing: anyio.CancelScope | None = None
        self.unwound: anyio.Event | None = None
        #: The asyncio task waiting for it, and its cancellations pending when it began.
        self.task = asyncio.current_task()
        self.baseline = baseline
        #: The revocation it went into, if any.
        self.batch: _Revocation | None = None
        #: When the workers were last asked for its result again (monotonic); its start.
        self.asked = time.monotonic()

    def cancelling(self) -> bool:
        """Whether its task has been cancelled since (the cancellation yet to reach it)."""
        task = self.task
        return task is not None and not task.done() and task.cancelling() > self.baseline


class _Revocation:
    """Attempts cancelled together, to be revoked in one message."""

    __slots__ = ("ids", "sent", "until")

    def __init__(self) -> None:
        #: Their correlation ids, in order, once each.
        self.ids: dict[str, None] = {}
        #: When none of them can start any more (``None``: one has no deadline).
        self.until: float | None = -math.inf
        self.sent = anyio.Event()

    def add(self, attempt: _Attempt) -> None:
        if attempt.batch is self:
            return
        attempt.batch = self
        self.ids[attempt.correlation_id] = None
        if self.until is not None:
            self.until = None if attempt.deadline is None else max(self.until, attempt.deadline)


class _HomeSink:
    """Events of an attempt whose broker I/O runs on the helper loop, emitted back home."""

    __slots__ = ("_events", "_home")

    def __init__(self, home: HomePortal, events: EventSink) -> None:
        self._home = home
        self._events = events

    async def emit(self, event: Any) -> None:
        events = self._events
        await self._home.run(lambda: events.emit(event))
