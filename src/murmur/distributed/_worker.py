"""The worker: the server side of the envelope a broker transport sends.

A ``Worker`` takes task messages for the agents it serves from the broker, runs each on
an ``Executor`` (at most ``concurrency`` at a time), sends the attempt's events and then
its result to the caller's reply address, and only then acknowledges the message. A
message can only run an agent the worker registered: the name is looked up in its
registry, nothing is imported.

A worker also hears the namespace's control channel: a ``CancelMessage`` (its caller gave
up) cancels the attempts it names (by correlation id, or by the batch they belong to) that
run here, and the worker remembers the others for a while, acknowledging them without
running them when they arrive. A ``ResendMessage`` (its caller's replies may have been
lost) has the worker send again the results it still keeps (the last ``SENT_MAX`` it sent,
for ``SENT_TTL`` seconds, ``SENT_MAX_BYTES`` in all).

And it sweeps, every ``redeliver_after`` seconds or so, the task channels of the agents no
live worker consumes: a task there whose deadline has passed is dead-lettered
(``unserved``) and its caller told, as the tasks a worker sets aside itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import socket
import sys
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import sniffio

from .._agents import AgentLike
from .._bridge import AsyncioBridge, HomePortal
from .._executor import Executor
from .._pipeline import Stage
from .._runtime import AgentRuntime
from .._types import ZERO_USAGE, AgentResult
from ..errors import (
    AgentTimeoutError,
    DeadLetteredError,
    InvalidStateError,
    InvalidTypeError,
    InvalidValueError,
)
from ..events.log import LogEventEmitter
from ..events.types import EventEmitter, EventType, RuntimeEvent
from ..middleware.rate_limit import RateLimit, RateLimitMiddleware
from ._adapter import DEFAULT_REDELIVER_AFTER, BrokerAdapter, DeadLetter, Delivery, load_adapter
from ._outage import backoff
from ._registry import AgentRegistry
from ._spawns import InheritedLimits
from ._transport import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_REPLY_GRACE,
    BrokerTransport,
    namespace_from_env,
    not_run,
    scrub,
)
from ._url import parse_broker_url
from ._wire import (
    EventMessage,
    ResendMessage,
    ResultMessage,
    TaskMessage,
    WireFormatError,
    WireVersionError,
    decode_control,
    decode_task,
    encode,
    encode_result,
)

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectSendStream

    from .._envelope import TaskEnvelope

__all__ = ["DEFAULT_MAX_DELIVERIES", "Worker", "WorkerStats"]

#: Deliveries of one task message a worker accepts before it dead-letters the message.
DEFAULT_MAX_DELIVERIES = 5

_log = logging.getLogger("murmur.worker")

#: Revoked attempts a worker remembers, at most (the oldest are forgotten first).
REVOKED_MAX = 100_000
#: Seconds a revoked attempt with no deadline is remembered.
REVOKED_TTL = 3600.0
#: Results a worker keeps after sending them, to send again if their caller asks (its
#: broker connection dropped, and the reply with it): at most this many...
SENT_MAX = 10_000
#: ...for at most this many seconds...
SENT_TTL = 600.0
#: ...and at most this many bytes in all (the oldest are forgotten first).
SENT_MAX_BYTES = 64 * 1024 * 1024
#: Seconds a worker's stop waits, at most, for a result being sent and its task message
#: acknowledged (the two go together: a stop between them would run the task again).
SETTLE_SECONDS = 5.0


@dataclass
class WorkerStats:
    """What a worker has done so far (read it live: the CLI's status line does)."""

    processed: int = 0
    failed: int = 0
    in_flight: int = 0
    started_at: float = field(default_factory=time.monotonic)
    #: Tasks finished, by agent name.
    per_agent: Counter[str] = field(default_factory=Counter)
    #: Messages set aside as dead letters (unreadable, not for this worker, or delivered
    #: more than ``max_deliveries`` times).
    rejected: int = 0
    #: Tasks taken but not finished (the worker stopped past its grace), or run but their
    #: result could not be sent while their caller waited: left unacknowledged for the
    #: broker to deliver again.
    returned: int = 0
    #: Tasks their caller cancelled: stopped mid-run, or skipped when they arrived.
    revoked: int = 0
    #: Results sent again because their caller asked (its reply may have been lost).
    resent: int = 0

    def rate(self) -> float:
        """Tasks finished per second since the worker started."""
        elapsed = time.monotonic() - self.started_at
        return (self.processed + self.failed) / elapsed if elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "processed": self.processed,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "rejected": self.rejected,
            "returned": self.returned,
            "revoked": self.revoked,
            "resent": self.resent,
            "per_agent": dict(self.per_agent),
        }


def default_worker_name() -> str:
    """``host-pid-xxxxxx``: unique per worker process, readable in logs and events."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Serves agents from a broker: ``async with Worker(broker, agents): ...``.

    Args:
        broker: The broker URL callers use (``AgentRuntime(broker=...)``).
        agents: What it serves: an ``AgentRegistry`` (``AgentRegistry.from_module(app)``),
            or agents (a list, or a mapping of name to agent).
        concurrency: Tasks run at once, at most.
        name: The worker's identity in events and logs (default ``host-pid-xxxxxx``).
        namespace: Prefix of the broker channels; as the callers' (``MURMUR_NAMESPACE``).
        middleware: Executor-side stages around every attempt run here.
        event_emitter: Receives the worker's own events (``worker.started``,
            ``worker.heartbeat``, ``worker.stopped``); default ``LogEventEmitter()``.
            Task events go back to the caller that sent the task.
        heartbeat_seconds: Interval of ``worker.heartbeat`` events.
        grace_seconds: On stop, how long in-flight tasks may take to finish; those still
            running then are cancelled and left on the broker to be delivered again.
        max_deliveries: A task message delivered more often than this (its workers kept
            dying or stopping on it) is not run again: it goes to the dead letters and its
            caller gets a ``DeadLetteredError``.
        redeliver_after: Seconds a task taken by a worker that stopped answering (it died,
            or lost the broker) waits before another worker gets it; a live worker keeps
            the tasks it runs, however long they take. Redis and NATS (its consumer's ack
            wait); RabbitMQ redelivers when the worker's connection drops, Kafka after its
            session timeout (see docs/distributed.md). Also about how often the worker
            sweeps the channels of agents no live worker serves, dead-lettering their
            tasks past their deadline (``unserved``).
        rate_limits: ``RateLimit``s the children its tasks spawn are admitted under (before
            they are published, as a caller's are). To limit the tasks the worker runs
            itself, put a ``RateLimitMiddleware`` in ``middleware`` (what
            ``murmur worker start --rate-limit`` does): each attempt then waits here,
            in its slot, until its limits admit it. The state of both is in
            ``rate_limit_state()``, the ``worker.started`` event, the heartbeats and the
            CLI's status line; the worker closes their store connections when it stops.

    The worker runs on asyncio; under Trio its broker I/O and its tasks run on a helper
    asyncio loop.
    """

    def __init__(
        self,
        broker: str,
        agents: AgentRegistry | Mapping[str, AgentLike] | Iterable[AgentLike],
        *,
        concurrency: int = 20,
        name: str | None = None,
        namespace: str | None = None,
        middleware: Sequence[Stage] = (),
        event_emitter: EventEmitter | None = None,
        heartbeat_seconds: float = 10.0,
        grace_seconds: float = 30.0,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        redeliver_after: float = DEFAULT_REDELIVER_AFTER,
        rate_limits: Sequence[RateLimit] = (),
    ) -> None:
        self.url = parse_broker_url(broker)
        self._adapter_class = load_adapter(self.url)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        for label, value in (
            ("heartbeat_seconds", heartbeat_seconds),
            ("grace_seconds", grace_seconds),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InvalidValueError(f"{label} must be a number >= 0, got {value!r}")
        if (
            isinstance(max_deliveries, bool)
            or not isinstance(max_deliveries, int)
            or max_deliveries < 1
        ):
            raise InvalidValueError(f"max_deliveries must be an int >= 1, got {max_deliveries!r}")
        self.max_deliveries = max_deliveries
        redeliver = redeliver_after
        if isinstance(redeliver, bool) or not isinstance(redeliver, (int, float)) or redeliver <= 0:
            raise InvalidValueError(f"redeliver_after must be a number > 0, got {redeliver!r}")
        self.registry = _as_registry(agents)
        if not len(self.registry):
            raise InvalidValueError("agents is empty: a worker must serve at least one agent")
        self.concurrency = concurrency
        self.name = name or default_worker_name()
        self.namespace = namespace or namespace_from_env()
        self.heartbeat_seconds = float(heartbeat_seconds)
        self.grace_seconds = float(grace_seconds)
        self.redeliver_after = float(redeliver_after)
        self.stats = WorkerStats()
        self._emitter = event_emitter if event_emitter is not None else LogEventEmitter()
        self._executor = Executor(list(middleware), agents=self.registry.as_mapping())
        #: The spawns' limiter (caller-side, in the spawner runtime), if any.
        self._spawn_limits = [RateLimitMiddleware(rate_limits)] if rate_limits else []
        self._limiters = [
            *(stage for stage in middleware if isinstance(stage, RateLimitMiddleware)),
            *self._spawn_limits,
        ]
        self._group: anyio.abc.TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._stop_flag = False
        self._stop_requested: asyncio.Event | None = None
        self._home: asyncio.AbstractEventLoop | None = None
        self._bridge: AsyncioBridge | None = None
        #: Under Trio, the way from the worker's loop back to the Trio task that started it
        #: (the emitter is called there, as the application expects).
        self._portal: HomePortal | None = None
        #: Tasks cancelled by a stop, to hand back once the worker consumes no more.
        self._cut_off: list[Delivery] = []
        #: The attempts running here, by correlation id and by batch id, to cancel if their
        #: caller does.
        self._running: dict[str, set[anyio.CancelScope]] = {}
        self._running_batches: dict[str, set[anyio.CancelScope]] = {}
        #: Attempts (and batches) their callers cancelled, not to be run if they arrive.
        self._revoked = _Revoked()
        #: The results sent lately, and those to send again (while consuming).
        self._sent = _Sent()
        self._resends: MemoryObjectSendStream[tuple[str, bytes]] | None = None
        self._revoked_batches = _Revoked()
        self._state = "new"

    def __repr__(self) -> str:
        return (
            f"Worker({self.url.redacted!r}, agents={self.registry.names()!r}, "
            f"concurrency={self.concurrency}, name={self.name!r})"
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Worker:
        """Start serving in the background; returns once the worker is consuming.

        Raises:
            BrokerUnavailableError: the broker cannot be reached.
        """
        group = anyio.create_task_group()
        await group.__aenter__()
        try:
            await group.start(self.serve)
        except BaseException:
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)
            raise
        self._group = group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Drain (as on SIGTERM) and stop; if the block raised, stop at once instead."""
        group, self._group = self._group, None
        if group is None:
            return False
        self.request_stop()
        return bool(await group.__aexit__(exc_type, exc, tb))

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until stopped (``request_stop``, ``stop_now``, or cancellation).

        ``await task_group.start(worker.serve)`` returns once the worker is consuming.

        Raises:
            BrokerUnavailableError: the broker cannot be reached.
            InvalidStateError: the worker was already started (a worker serves once).
        """
        if self._state != "new":
            raise InvalidStateError(f"this Worker is {self._state}; create a new one")
        self._state = "running"
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                await self._run(task_status=task_status)
        finally:
            self._scope = None
            self._state = "stopped"
            bridge, self._bridge = self._bridge, None
            with anyio.CancelScope(shield=True):
                if bridge is not None:
                    await bridge.aclose()
                await self._executor.aclose()

    def request_stop(self) -> None:
        """Drain: take no more tasks, let in-flight ones finish within ``grace_seconds``,
        then stop. Thread-safe; ``serve`` (or the ``async with`` block's end) returns when
        it is done. Before the worker consumes, it stops as soon as it starts."""
        self._stop_flag = True
        event, home = self._stop_requested, self._home
        if event is None or home is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is home:
            event.set()
        elif not home.is_closed():
            home.call_soon_threadsafe(event.set)

    def stop_now(self) -> None:
        """Stop at once: in-flight tasks are cancelled and left on the broker, unacknowledged,
        to be delivered again. Call it from the thread (event loop) that runs ``serve``."""
        self._stop_flag = True
        scope = self._scope
        if scope is not None:
            scope.cancel()

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        if sniffio.current_async_library() == "asyncio":
            await self._serve(_started(task_status))
            return
        bridge = self._bridge = AsyncioBridge(name="murmur-worker-loop")
        error: Exception | None = None
        async with anyio.create_task_group() as task_group:
            home = self._portal = HomePortal(task_group)

            async def started() -> None:
                await home.run(_started(task_status))

            try:
                await bridge.run(self._serve, started)
            except Exception as exc:
                error = exc  # raised outside the task group: not wrapped in a group
            finally:
                self._portal = None
                task_group.cancel_scope.cancel()
        if error is not None:
            raise error

    # -- serving (on the worker's asyncio loop) ----------------------------------------

    async def _serve(self, started: Callable[[], Awaitable[None]]) -> None:
        self._home = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        if self._stop_flag:  # asked before this point (request_stop reads the event after)
            self._stop_requested.set()
        adapter = self._adapter_class(
            self.url, namespace=self.namespace, redeliver_after=self.redeliver_after
        )
        try:
            with anyio.fail_after(DEFAULT_CONNECT_TIMEOUT):
                await adapter.connect()
        except BaseException as exc:
            from ..errors import BrokerUnavailableError

            # Cancelled midway too: what was opened is closed.
            with anyio.CancelScope(shield=True):
                await _quietly(adapter.aclose())
            if not isinstance(exc, Exception):
                raise
            raise BrokerUnavailableError(
                f"worker {self.name}: cannot connect to broker {self.url.redacted}: "
                f"{type(exc).__name__}: {scrub(str(exc), self.url)}"
            ) from None
        # Children that tasks spawn here go back through the broker, within the limits
        # their caller set (see _spawns).
        spawner = AgentRuntime(
            transport=BrokerTransport(self.url.secret, namespace=self.namespace),
            middleware=[InheritedLimits(), *self._spawn_limits],
            event_emitter=_HomeEmitter(self),
        )
        self._executor.host = spawner.__murmur_host__()
        try:
            await self._consume(adapter, started)
        finally:
            with anyio.CancelScope(shield=True):
                self._executor.host = None
                await _quietly(spawner.aclose())
                for stage in self._executor.stages:
                    if isinstance(stage, RateLimitMiddleware):
                        await _quietly(stage.aclose())  # their store connections, if any
                await self._release(adapter)
                await _quietly(adapter.aclose())
                await self._emit(EventType.WORKER_STOPPED, self.stats.as_dict())

    async def _consume(
        self, adapter: BrokerAdapter, started: Callable[[], Awaitable[None]]
    ) -> None:
        send, receive = anyio.create_memory_object_stream[tuple[bytes, Delivery]](0)

        async def take(data: bytes, delivery: Delivery) -> None:
            try:
                # A free slot takes it at once, with no yield: a batch the broker handed
                # over together starts together, in one turn of the loop, and so its
                # results tend to be settled together too (one write, one round trip),
                # not one per turn. Else it waits for one.
                try:
                    send.send_nowait((data, delivery))
                except anyio.WouldBlock:
                    await send.send((data, delivery))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                await delivery.nack()  # stopping: leave it for another worker

        assert self._stop_requested is not None
        resends, to_resend = anyio.create_memory_object_stream[tuple[str, bytes]](math.inf)
        self._resends = resends
        await adapter.open_control(self._on_control)
        async with anyio.create_task_group() as slots:
            slots.start_soon(self._resend, adapter, to_resend)
            for _ in range(self.concurrency):
                slots.start_soon(self._slot, adapter, receive.clone())
            receive.close()
            await adapter.consume(
                self.registry.names(), take, prefetch=self.concurrency, consumer=self.name
            )
            await self._emit(
                EventType.WORKER_STARTED,
                {
                    "agents": self.registry.names(),
                    "concurrency": self.concurrency,
                    **({"rate_limits": self.rate_limit_state()} if self._limiters else {}),
                },
            )
            async with anyio.create_task_group() as beat:
                beat.start_soon(self._heartbeat)
                beat.start_soon(self._sweep, adapter)
                await started()
                await self._stop_requested.wait()
                beat.cancel_scope.cancel()
            # Closed first: a message waiting for a slot is put back (``take``) at once,
            # for another worker, rather than run here once a slot frees.
            send.close()  # the slots finish what they hold, then end
            resends.close()
            await adapter.stop_consuming()
            slots.cancel_scope.deadline = anyio.current_time() + self.grace_seconds

    async def _release(self, adapter: BrokerAdapter) -> None:
        """Stop consuming, then hand back the tasks cut off by the stop."""
        cut_off, self._cut_off = self._cut_off, []
        if not cut_off:
            return
        await _quietly(adapter.stop_consuming())
        for delivery in cut_off:
            await _quietly(delivery.nack())

    def _on_control(self, data: bytes) -> None:
        """A control message (on the worker's loop): cancel or revoke what it names."""
        try:
            message = decode_control(data)
        except WireFormatError as exc:
            _log.warning("worker %s: ignored a control message: %s", self.name, exc)
            return
        if message is None:
            _log.debug("worker %s: ignored a control message of a kind it does not know", self.name)
            return
        if isinstance(message, ResendMessage):
            self._resend_asked(message)
            return
        until = message.until if message.until is not None else time.time() + REVOKED_TTL
        for batch_id in message.batch_ids:
            self._revoked_batches.add(batch_id, until)  # its queued attempts too
            for scope in self._running_batches.get(batch_id, ()):
                scope.cancel()
        for correlation_id in message.correlation_ids:
            self._revoked.add(correlation_id, until)  # a copy may be on its way here too
            for scope in self._running.get(correlation_id, ()):
                scope.cancel()

    def _resend_asked(self, message: ResendMessage) -> None:
        """A caller asks for results again: those this worker still keeps are queued to
        send (to the address they were sent to, if it is the caller's)."""
        resends = self._resends
        if resends is None:
            return
        for correlation_id in message.correlation_ids:
            data = self._sent.get(correlation_id, message.reply_to)
            if data is not None:
                try:
                    resends.send_nowait((message.reply_to, data))
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return  # stopping

    async def _resend(self, adapter: BrokerAdapter, receive: Any) -> None:
        async with receive:
            async for address, data in receive:
                try:
                    await adapter.publish_reply(address, data)
                except Exception:
                    _log.warning(
                        "worker %s: could not send a result again to %s",
                        self.name,
                        address,
                        exc_info=True,
                    )
                else:
                    self.stats.resent += 1

    async def _slot(self, adapter: BrokerAdapter, receive: Any) -> None:
        async with receive:
            async for data, delivery in receive:
                await self._handle(adapter, data, delivery)

    async def _handle(self, adapter: BrokerAdapter, data: bytes, delivery: Delivery) -> None:
        try:
            message = decode_task(data)
        except WireVersionError as exc:
            await self._dead_letter(adapter, data, delivery, "unknown-version", str(exc))
            return
        except WireFormatError as exc:
            await self._dead_letter(adapter, data, delivery, "malformed", str(exc))
            return
        if not isinstance(message, TaskMessage):
            detail = f"a {message.kind} message on a task channel"
            await self._dead_letter(adapter, data, delivery, "not-a-task", detail)
            return
        envelope = message.envelope
        if envelope.agent not in self.registry:
            detail = f"agent {envelope.agent!r} is not served by this worker"
            await self._dead_letter(adapter, data, delivery, "unknown-agent", detail)
            return
        if delivery.deliveries > self.max_deliveries:
            detail = (
                f"delivered {delivery.deliveries} times, more than the worker's limit of "
                f"{self.max_deliveries} (its workers died or stopped while running it)"
            )
            await self._dead_letter(adapter, data, delivery, "delivery-limit", detail)
            return
        stats = self.stats
        correlation_id = message.correlation_id
        batch_id = envelope.batch_id
        if self._revoked.holds(correlation_id) or (
            batch_id is not None and self._revoked_batches.holds(batch_id)
        ):
            self._skip(envelope, "skipped")  # its caller cancelled it: never run, never redone
            await _quietly(delivery.ack())
            return
        stats.in_flight += 1
        try:
            sink = _ReplySink(adapter, message, self.name)
            # Found by a revoke naming the attempt (or its batch) while it runs. No context
            # managers of generators here: this runs for every task.
            revoked = anyio.CancelScope()
            self._track(correlation_id, batch_id, revoked)
            try:
                with revoked:
                    if envelope.deadline is not None and time.time() >= envelope.deadline:
                        result = _expired(envelope)  # never start a paid call nobody waits for
                    elif envelope.trace_context and "opentelemetry.trace" in sys.modules:
                        with _trace_context(envelope.trace_context):
                            result = await self._executor.execute(envelope, sink)
                    else:
                        result = await self._executor.execute(envelope, sink)
            finally:
                self._untrack(correlation_id, batch_id, revoked)
            if revoked.cancel_called:
                # Its caller cancelled it (it may have finished first): nobody waits for a
                # result; settled, never run again.
                stats.in_flight -= 1
                self._skip(envelope, "cancelled")
                await _quietly(delivery.ack())
                return
            data, result = _encoded_result(result, correlation_id, self.name)
        except BaseException as exc:
            # Cancelled (stopped past the grace): not acknowledged, so the broker delivers
            # it again.
            stats.in_flight -= 1
            stats.returned += 1
            stopped = isinstance(exc, anyio.get_cancelled_exc_class())
            _log.warning(
                "worker %s: task %s of agent %r not finished (%s): left on the broker to be "
                "delivered again",
                self.name,
                envelope.task.task_id,
                envelope.agent,
                "stopped" if stopped else type(exc).__name__,
            )
            if stopped:
                # Released once this worker consumes no more (``_release``): released now,
                # the broker could hand it straight back to this stopping worker (NATS
                # does, to the pull request still open), where it would wait for the
                # broker's redelivery timeout.
                self._cut_off.append(delivery)
            else:
                with anyio.CancelScope(shield=True):
                    await _quietly(delivery.nack())
            raise
        stats.in_flight -= 1
        stats.per_agent[envelope.agent] += 1
        # Kept first: a caller that missed the reply asks for it again (even if this send
        # fails; the ack will then most likely fail too, and the task run again).
        self._sent.add(correlation_id, message.reply_to, data)
        try:
            sent = await self._reply(adapter, message, delivery, data)
        except BaseException as exc:
            # Stopped (past the grace) while its result could not be sent: not
            # acknowledged, delivered again.
            stats.returned += 1
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                self._cut_off.append(delivery)  # released as those cut off mid-run are
            else:
                with anyio.CancelScope(shield=True):
                    await _quietly(delivery.nack())
            raise
        if not sent:
            # Run, but its result never reached the broker: left for the broker to deliver
            # again (at worst run twice, never lost).
            stats.returned += 1
            with anyio.move_on_after(SETTLE_SECONDS, shield=True):
                await _quietly(delivery.nack())
        elif result.error is None:
            stats.processed += 1
        else:
            stats.failed += 1

    async def _reply(
        self, adapter: BrokerAdapter, message: TaskMessage, delivery: Delivery, data: bytes
    ) -> bool:
        """Send an attempt's result (``data``) to its caller, then acknowledge its task
        message; whether the result was sent.

        The two go together, shielded from the worker's stop, within ``SETTLE_SECONDS``: a
        stop between them would have the task run again after its result was sent. While
        the broker does not take the result, it is tried again for as long as its caller
        may wait: until the attempt's deadline plus ``DEFAULT_REPLY_GRACE``, or (no
        deadline) until the worker stops past its grace, which cancels this wait."""
        envelope = message.envelope
        last = None if envelope.deadline is None else envelope.deadline + DEFAULT_REPLY_GRACE
        failures = 0
        while True:
            sent = False
            error = f"not sent within {SETTLE_SECONDS:g}s"
            # (move_on_after, as a plain scope: this runs for every task.)
            settling = anyio.CancelScope(
                deadline=anyio.current_time() + SETTLE_SECONDS, shield=True
            )
            with settling:
                try:
                    # Not acknowledged if the broker's connection fails after the result
                    # went: the task comes again, and its caller drops the second result.
                    await adapter.settle(message.reply_to, data, delivery)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                else:
                    sent = True
            if sent:
                return True
            failures += 1
            if failures == 1:
                _log.warning(
                    "worker %s: the result of task %s of agent %r could not be sent to %s "
                    "(%s); trying again while its caller may wait",
                    self.name,
                    envelope.task.task_id,
                    envelope.agent,
                    message.reply_to,
                    scrub(error, self.url),
                )
            if last is not None and time.time() >= last:
                _log.error(
                    "worker %s: the result of task %s of agent %r could not be sent to %s "
                    "before its caller stopped waiting: left unacknowledged, to be "
                    "delivered again",
                    self.name,
                    envelope.task.task_id,
                    envelope.agent,
                    message.reply_to,
                )
                return False
            await anyio.sleep(backoff(failures))

    async def _dead_letter(
        self, adapter: BrokerAdapter, data: bytes, delivery: Delivery, reason: str, detail: str
    ) -> None:
        """Set the message aside in the dead-letter store instead of running it, tell its
        caller (if the message says who that is), then acknowledge it (within
        ``SETTLE_SECONDS``)."""
        self.stats.rejected += 1
        letter = DeadLetter(
            data=data,
            reason=reason,
            detail=detail,
            agent=adapter.agent_of(delivery.channel),
            worker=self.name,
            timestamp=time.time(),
            deliveries=delivery.deliveries,
        )
        # Shielded from the worker's stop, within a bound: a stop between storing it and
        # acknowledging it would have it delivered and stored again (a copy ``murmur dlq``
        # shows and replays once, as one whose acknowledgement failed).
        with anyio.move_on_after(SETTLE_SECONDS, shield=True):
            try:
                await adapter.publish_dead_letter(letter)
            except Exception:
                # Never dropped unrecorded: left on the broker, to be delivered again.
                _log.exception(
                    "worker %s: could not dead-letter a message (%s) from %s; put back",
                    self.name,
                    reason,
                    delivery.channel,
                )
                await _quietly(delivery.nack())
                return
            _log.error(
                "worker %s: dead-lettered a message from %s (%s): %s",
                self.name,
                delivery.channel,
                reason,
                detail,
            )
            await self._tell_caller(adapter, letter)
            await _quietly(delivery.ack())

    async def _tell_caller(self, adapter: BrokerAdapter, letter: DeadLetter) -> None:
        """Send a dead letter's caller (if its message says who that is) its error result."""
        try:
            reply = _dead_letter_reply(letter.data, letter)
        except Exception:  # whatever the message holds, it never stops the worker
            _log.exception("worker %s: could not read a dead letter's caller", self.name)
            reply = None
        if reply is not None:
            address, correlation_id, result = reply
            self._sent.add(correlation_id, address, result)
            await _quietly(adapter.publish_reply(address, result))

    async def _sweep(self, adapter: BrokerAdapter) -> None:
        """Every ``redeliver_after`` seconds or so (jittered, so that workers take turns),
        dead-letter the tasks past their deadline in channels no live worker consumes."""
        served = self.registry.names()
        while True:
            await anyio.sleep(self.redeliver_after * random.uniform(0.5, 1.5))
            try:
                letters = await adapter.sweep_unserved(served, self._unserved)
            except Exception:
                _log.warning(
                    "worker %s: sweeping for unserved tasks failed", self.name, exc_info=True
                )
                continue
            for letter in letters:
                self.stats.rejected += 1
                _log.error(
                    "worker %s: dead-lettered a message for agent %r (unserved): %s",
                    self.name,
                    letter.agent,
                    letter.detail,
                )
                await self._tell_caller(adapter, letter)

    def _unserved(self, data: bytes, agent: str, deliveries: int) -> DeadLetter | None:
        """The dead letter of a task waiting for ``agent``, whom no live worker serves, if
        its deadline has passed; ``None`` to leave it (no deadline: it waits for a worker,
        as in any queue; an unreadable message: a worker of the agent sets it aside)."""
        deadline = _deadline(data)
        now = time.time()
        if deadline is None or deadline > now:
            return None
        return DeadLetter(
            data=data,
            reason="unserved",
            detail=f"no worker served agent {agent!r} before the task's deadline",
            agent=agent,
            worker=self.name,
            timestamp=now,
            deliveries=deliveries,
        )

    def _track(self, correlation_id: str, batch_id: str | None, scope: anyio.CancelScope) -> None:
        """Where a revoke naming the attempt (or its batch) finds ``scope``, while it runs
        (until ``_untrack``)."""
        self._running.setdefault(correlation_id, set()).add(scope)
        if batch_id is not None:
            self._running_batches.setdefault(batch_id, set()).add(scope)

    def _untrack(self, correlation_id: str, batch_id: str | None, scope: anyio.CancelScope) -> None:
        for index, key in ((self._running, correlation_id), (self._running_batches, batch_id)):
            if key is None:
                continue
            running = index[key]
            running.discard(scope)
            if not running:
                del index[key]

    def _skip(self, envelope: TaskEnvelope, what: str) -> None:
        self.stats.revoked += 1
        _log.info(
            "worker %s: task %s of agent %r %s: its caller cancelled it",
            self.name,
            envelope.task.task_id,
            envelope.agent,
            what,
        )

    def rate_limit_state(self) -> list[dict[str, Any]]:
        """The state of the worker's rate limits, one dict per limit (``RateLimit.state``):
        ``limit``, ``factor``, ``waiting``, ``paused_until``."""
        return [state for limiter in self._limiters for state in limiter.state()]

    async def _heartbeat(self) -> None:
        if self.heartbeat_seconds <= 0:
            return
        while True:
            await anyio.sleep(self.heartbeat_seconds)
            data = {**self.stats.as_dict(), "rate": self.stats.rate()}
            if self._limiters:
                data["rate_limits"] = self.rate_limit_state()
            await self._emit(EventType.WORKER_HEARTBEAT, data)

    async def _emit(self, kind: EventType, data: dict[str, Any]) -> None:
        await self._emit_event(RuntimeEvent(type=kind, data={"worker": self.name, **data}))

    async def _emit_event(self, event: RuntimeEvent) -> None:
        emitter, portal = self._emitter, self._portal
        try:
            if portal is None:
                await emitter.emit(event)
            else:
                await portal.run(lambda: emitter.emit(event))
        except Exception:
            _log.warning(
                "worker %s: event emitter failed on %s", self.name, event.type, exc_info=True
            )


class _Revoked:
    """Correlation ids of revoked attempts, each until a wall-clock time (its attempt's
    deadline, or ``REVOKED_TTL``), at most ``REVOKED_MAX`` of them (oldest out first)."""

    __slots__ = ("_until",)

    def __init__(self) -> None:
        self._until: OrderedDict[str, float] = OrderedDict()

    def add(self, correlation_id: str, until: float) -> None:
        entries = self._until
        entries[correlation_id] = until
        entries.move_to_end(correlation_id)
        now = time.time()
        while entries and (len(entries) > REVOKED_MAX or next(iter(entries.values())) <= now):
            entries.popitem(last=False)

    def holds(self, correlation_id: str) -> bool:
        until = self._until.get(correlation_id)
        return until is not None and until > time.time()


class _Sent:
    """The results a worker sent lately, as sent, by correlation id, with where they went:
    at most ``SENT_MAX`` of them, ``SENT_MAX_BYTES`` in all, none older than ``SENT_TTL``
    seconds (the oldest out first)."""

    __slots__ = ("_entries", "_size")

    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[str, bytes, float]] = OrderedDict()
        self._size = 0

    def add(self, correlation_id: str, address: str, data: bytes) -> None:
        entries = self._entries
        old = entries.pop(correlation_id, None)
        if old is not None:
            self._size -= len(old[1])
        entries[correlation_id] = (address, data, time.monotonic())
        self._size += len(data)
        self._trim()

    def get(self, correlation_id: str, address: str) -> bytes | None:
        """The result sent for ``correlation_id``, if it is kept and went to ``address``."""
        self._trim()
        entry = self._entries.get(correlation_id)
        if entry is None or entry[0] != address:
            return None
        return entry[1]

    def _trim(self) -> None:
        entries = self._entries
        old = time.monotonic() - SENT_TTL
        while entries and (
            len(entries) > SENT_MAX
            or self._size > SENT_MAX_BYTES
            or next(iter(entries.values()))[2] <= old
        ):
            _, (_, data, _) = entries.popitem(last=False)
            self._size -= len(data)


class _HomeEmitter:
    """The worker's emitter, reached from its loop (back home under Trio)."""

    __slots__ = ("_worker",)

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def emit(self, event: RuntimeEvent) -> None:
        await self._worker._emit_event(event)


class _ReplySink:
    """An attempt's events, sent to its caller's reply address as they happen."""

    __slots__ = ("_adapter", "_message", "_worker")

    def __init__(self, adapter: BrokerAdapter, message: TaskMessage, worker: str) -> None:
        self._adapter = adapter
        self._message = message
        self._worker = worker

    async def emit(self, event: Any) -> None:
        message = self._message
        reply = EventMessage(
            event=event, worker=self._worker, correlation_id=message.correlation_id
        )
        try:
            await self._adapter.publish_reply(message.reply_to, encode(reply))
        except Exception:
            _log.warning("could not send an event to %s", message.reply_to, exc_info=True)


def _encoded_result(
    result: AgentResult[Any], correlation_id: str, worker: str
) -> tuple[bytes, AgentResult[Any]]:
    """The result's reply, and the result it carries: an output that cannot travel as JSON
    becomes the attempt's error (what it spent is kept), rather than a failure of the
    worker that would leave the task to be delivered again, and fail the next one too."""
    try:
        return encode_result(result, correlation_id, worker), result
    except Exception as exc:
        error = InvalidValueError(
            f"agent {result.agent!r} returned an output of type {type(result.output).__name__} "
            f"that cannot be sent back to its caller as JSON: {exc}"
        )
    unsendable = AgentResult._build(
        None, error, result.usage, result.attempts, result.duration, result.task_id, result.agent
    )
    reply = ResultMessage(result=unsendable, worker=worker, correlation_id=correlation_id)
    return encode(reply), unsendable


def _dead_letter_reply(data: bytes, letter: DeadLetter) -> tuple[str, str, bytes] | None:
    """The caller's reply address, the correlation id and a ``DeadLetteredError`` result
    for a dead-lettered message, read leniently (whatever else is wrong with it); ``None``
    if it names no caller."""
    try:
        fields = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, or nested past what Python parses
        return None
    if not isinstance(fields, dict):
        return None
    reply_to, correlation_id = fields.get("reply_to"), fields.get("correlation_id")
    if not (isinstance(reply_to, str) and reply_to and isinstance(correlation_id, str)):
        return None
    if not correlation_id:
        return None
    envelope = fields.get("envelope")
    envelope = envelope if isinstance(envelope, dict) else {}
    task = envelope.get("task")
    task_id = task.get("task_id") if isinstance(task, dict) else None
    agent = envelope.get("agent")
    attempt = envelope.get("attempt")
    task_id = task_id if isinstance(task_id, str) else ""
    agent = agent if isinstance(agent, str) else letter.agent
    attempt = attempt if isinstance(attempt, int) and attempt >= 1 else 1
    error = DeadLetteredError(
        f"task {task_id or '?'} of agent {agent!r} was dead-lettered by worker "
        f"{letter.worker} ({letter.reason}): {letter.detail}"
    )
    result = AgentResult._build(None, error, ZERO_USAGE, attempt, 0.0, task_id, agent)
    reply = ResultMessage(result=result, worker=letter.worker, correlation_id=correlation_id)
    return reply_to, correlation_id, encode(reply)


def _deadline(data: bytes) -> float | None:
    """A task message's deadline, read leniently; ``None`` if it has none or is not a
    task message."""
    try:
        fields = json.loads(data)
    except (ValueError, RecursionError):
        return None
    envelope = fields.get("envelope") if isinstance(fields, dict) else None
    if not isinstance(envelope, dict) or fields.get("kind") != "task":
        return None
    deadline = envelope.get("deadline")
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
        return None
    return float(deadline)


def _expired(envelope: TaskEnvelope) -> AgentResult[Any]:
    error = AgentTimeoutError(
        f"agent {envelope.agent!r} attempt {envelope.attempt} reached the worker after its "
        "deadline; not started"
    )
    return not_run(envelope, error)


@contextmanager
def _trace_context(carrier: dict[str, str]) -> Iterator[None]:
    """The caller's OpenTelemetry context, current while the attempt runs, if this process
    uses OpenTelemetry: spans made by the agent are children of the caller's task span."""
    if not carrier or "opentelemetry.trace" not in sys.modules:
        yield
        return
    from opentelemetry import context, propagate

    token = context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        context.detach(token)


def _started(task_status: anyio.abc.TaskStatus[None]) -> Callable[[], Awaitable[None]]:
    async def started() -> None:
        task_status.started()

    return started


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:
        _log.warning("worker cleanup step failed", exc_info=True)


def _as_registry(agents: Any) -> AgentRegistry:
    if isinstance(agents, AgentRegistry):
        return agents
    registry = AgentRegistry()
    if isinstance(agents, Mapping):
        for name, agent in agents.items():
            impl = registry.add(agent, origin=f"agents[{name!r}]")
            if impl.name != name:
                raise InvalidValueError(
                    f"agents[{name!r}] is named {impl.name!r}: callers address agents by "
                    "their own name; key the mapping by it"
                )
        return registry
    if isinstance(agents, (str, bytes)) or not isinstance(agents, Iterable):
        raise InvalidTypeError(
            "agents must be an AgentRegistry, a list of agents or a mapping of name to agent, "
            f"got {type(agents).__name__}"
        )
    for index, agent in enumerate(agents):
        registry.add(agent, origin=f"agents[{index}]")
    return registry
