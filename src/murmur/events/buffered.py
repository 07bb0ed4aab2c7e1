"""BufferedEmitter: a slow emitter decoupled from the run by a bounded queue.

The runtime awaits its emitter in line (that is how every event of a call has been handed
over by the time the call returns). An emitter that does slow I/O in ``emit`` (a network
write, a database insert) would therefore slow every task down. Wrapped in a
``BufferedEmitter``, it receives the same events, in the same order, from a background
task, while ``emit`` itself only queues: it never waits, and when the queue is full the
event is dropped and counted.

The background task lives inside ``async with BufferedEmitter(...)``: nothing outlives the
block. On a normal exit the queued events are delivered first (for at most
``drain_timeout`` seconds); on an exit by an exception or a cancellation they are
dropped, and counted.
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import InvalidStateError, InvalidTypeError, InvalidValueError
from .log import log_exception
from .types import EventEmitter, EventType, RuntimeEvent, emitter_stages, wanted_types

__all__ = ["BufferedEmitter"]


class BufferedEmitter:
    """Hands events to ``emitter`` from a background task; ``emit`` only queues.

    Use it as an async context manager around the runtime's use::

        async with BufferedEmitter(SlowEmitter(), max_buffer=10_000) as events:
            async with AgentRuntime(event_emitter=events) as runtime:
                await runtime.gather(agent, tasks)

    Args:
        emitter: The emitter to feed; its ``event_types()`` and ``pipeline_stages()`` are
            passed on to the runtime.
        max_buffer: How many events may wait; past that, new events are dropped.
        drain_timeout: On a normal exit, how long to keep delivering what is queued
            (seconds; ``None``: until it is all delivered). What is left is dropped.

    Attributes:
        delivered: Events handed to ``emitter`` (whether or not it raised).
        dropped: Events that never reached it: the queue was full, or they were still
            queued when the block ended.
        failures: Events whose ``emit`` raised (isolated; the first one is logged).
    """

    def __init__(
        self,
        emitter: EventEmitter,
        *,
        max_buffer: int = 10_000,
        drain_timeout: float | None = 5.0,
    ) -> None:
        if not callable(getattr(emitter, "emit", None)):
            raise InvalidTypeError(
                f"emitter must have `async def emit(self, event)`, got {type(emitter).__name__}"
            )
        if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or max_buffer < 1:
            raise InvalidValueError(f"max_buffer must be an int >= 1, got {max_buffer!r}")
        if drain_timeout is not None and not (
            isinstance(drain_timeout, (int, float)) and 0 <= drain_timeout < math.inf
        ):
            raise InvalidValueError(
                f"drain_timeout must be a number of seconds >= 0, or None, got {drain_timeout!r}"
            )
        self.emitter = emitter
        self.max_buffer = max_buffer
        self.drain_timeout = drain_timeout
        self.delivered = 0
        self.dropped = 0
        self.failures = 0
        self._send: MemoryObjectSendStream[RuntimeEvent] | None = None
        self._receive: MemoryObjectReceiveStream[RuntimeEvent] | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._used = False

    def event_types(self) -> frozenset[EventType] | None:
        """What the wrapped emitter wants."""
        return wanted_types(self.emitter)

    def pipeline_stages(self) -> list[Any]:
        """The wrapped emitter's stages."""
        return emitter_stages(self.emitter)

    @property
    def queued(self) -> int:
        """Events waiting to be delivered."""
        receive = self._receive
        return 0 if receive is None else receive.statistics().current_buffer_used

    async def emit(self, event: RuntimeEvent) -> None:
        """Queue ``event``; never waits. A full queue drops it (counted in ``dropped``).

        Raises:
            RuntimeError: outside ``async with`` (the runtime isolates and logs it).
        """
        send = self._send
        if send is None:
            raise InvalidStateError(
                "BufferedEmitter is not running: use it inside `async with BufferedEmitter(...)`"
            )
        try:
            send.send_nowait(event)
        except anyio.WouldBlock:
            self.dropped += 1

    async def __aenter__(self) -> Self:
        if self._used:
            raise InvalidStateError("a BufferedEmitter can be entered only once")
        self._used = True
        send, receive = anyio.create_memory_object_stream[RuntimeEvent](self.max_buffer)
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._send, self._receive, self._task_group = send, receive, task_group
        task_group.start_soon(self._deliver, receive, name="murmur BufferedEmitter")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task_group = self._task_group
        send = self._send
        if task_group is None or send is None:
            raise InvalidStateError("BufferedEmitter.__aexit__ without __aenter__")
        self._send = None  # emit() refuses from now on
        send.close()  # the delivery task ends once the queue is empty
        if exc_type is not None:
            task_group.cancel_scope.cancel()  # leaving by an error: no draining
        elif self.drain_timeout is not None:
            task_group.cancel_scope.deadline = anyio.current_time() + self.drain_timeout
        try:
            # The block's own exception is not the delivery task's business: it goes on
            # as it is (not wrapped in an exception group) once delivery has stopped.
            await task_group.__aexit__(None, None, None)
        finally:
            self.dropped += self.queued
            if self._receive is not None:
                self._receive.close()

    async def _deliver(self, receive: MemoryObjectReceiveStream[RuntimeEvent]) -> None:
        emitter = self.emitter
        async for event in receive:
            self.delivered += 1
            try:
                await emitter.emit(event)
            except Exception:
                self.failures += 1
                if self.failures == 1:
                    log_exception(
                        "buffered event emitter failed; its later failures are not logged",
                        emitter=type(emitter).__name__,
                        event_type=str(event.type),
                    )
