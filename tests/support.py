"""Helpers shared by the test suites."""

from __future__ import annotations

import ast
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel

from murmur import EventType, RuntimeEvent


class FakeSleep:
    """Stands in for ``anyio.sleep`` (backoff waits): records each wait, returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await anyio.lowlevel.checkpoint()


def throttled_once(name: str, model: str, retry_after: str) -> Any:
    """A function agent of ``model`` whose first call fails with a provider's 429 asking to
    wait ``retry_after`` seconds; later calls return their input."""
    from pydantic_ai.exceptions import ModelHTTPError

    from murmur import FunctionAgent

    calls: list[Any] = []

    async def call(value: Any) -> Any:
        calls.append(value)
        if len(calls) == 1:
            raise ModelHTTPError(429, model, headers={"retry-after": retry_after})
        return value

    return FunctionAgent(call, name=name, model=model)


def crossed(error: Exception) -> Exception:
    """``error`` as a caller gets it back from a worker (through JSON)."""
    from murmur import ErrorInfo

    return ErrorInfo.model_validate_json(
        ErrorInfo.from_exception(error).model_dump_json()
    ).to_exception()


class Recorder:
    """An event emitter that keeps every event it is handed."""

    def __init__(self) -> None:
        self.events: list[RuntimeEvent] = []

    async def emit(self, event: RuntimeEvent) -> None:
        self.events.append(event)

    def types(self) -> list[EventType]:
        """The types of the events so far, in order."""
        return [e.type for e in self.events]

    def of(self, kind: EventType) -> list[RuntimeEvent]:
        """The events of one type, in order."""
        return [e for e in self.events if e.type is kind]


async def exec_snippet(source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Run ``source`` (which may ``await`` at top level) with ``namespace`` as its globals."""
    code = compile(source, "<cookbook>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    outcome = eval(code, namespace)
    if outcome is not None:
        await outcome
    return namespace


@dataclass
class CancelledCall:
    """What came out of a call cancelled from outside by ``cancel_when_ready``."""

    #: What the call returned (it must not have: cancellation is not a result).
    returned: list[Any] = field(default_factory=list)
    #: The cancellation exceptions that came out of the call.
    propagated: list[BaseException] = field(default_factory=list)
    #: Whether the cancel scope around it caught its own cancellation.
    cancelled_caught: bool = False


async def cancel_when_ready(
    call: Callable[[], Awaitable[Any]], ready: Callable[[], Awaitable[Any]]
) -> CancelledCall:
    """Start ``call()`` in a task, wait for ``ready()``, then cancel the scope around both."""
    outcome = CancelledCall()

    async def caller() -> None:
        try:
            outcome.returned.append(await call())
        except anyio.get_cancelled_exc_class() as exc:
            outcome.propagated.append(exc)
            raise

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await ready()
            scope.cancel()
    outcome.cancelled_caught = scope.cancelled_caught
    return outcome


async def stray_cancellation() -> None:
    """Receive a ``CancelledError`` the running task was not sent.

    On asyncio: await a future that "someone else" cancelled. On Trio: raise asyncio's
    cancellation, as a library doing its own asyncio work would.
    """
    import asyncio

    if anyio.get_cancelled_exc_class() is asyncio.CancelledError:
        future = asyncio.get_running_loop().create_future()
        future.cancel()  # by someone else: the awaiting task is not cancelled
        await future
    raise asyncio.CancelledError


async def in_shielded_cleanup(call: Callable[[], Awaitable[Any]]) -> Any:
    """What ``call()`` returns, or the exception that leaked out of it, when it runs as
    clean-up code of a cancelled task (under ``CancelScope(shield=True)``, while the task
    is still being cancelled: on asyncio its ``Task.cancelling()`` is 1)."""
    outcome: list[Any] = []
    with anyio.CancelScope() as outer:
        outer.cancel()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    outcome.append(await call())
                except BaseException as exc:  # what leaked out of the shielded call
                    outcome.append(exc)
    assert outer.cancelled_caught
    return outcome[0]


class Barrier:
    """Holds the first request of each run until ``parties`` runs are in flight at once.

    Created lazily in the loop the model runs in (the bridge loop under Trio).
    """

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self._event: anyio.Event | None = None

    async def wait(self) -> None:
        if self._event is None:
            self._event = anyio.Event()
        self.arrived += 1
        if self.arrived >= self.parties:
            self._event.set()
        await self._event.wait()


def tokens(n: int) -> Any:
    """A model response's usage of ``n`` tokens, split into input and output."""
    from pydantic_ai.usage import RequestUsage

    return RequestUsage(input_tokens=n - n // 4, output_tokens=n // 4)


def stepping_model(per_response: int, steps: int | None, barrier: Barrier | None = None) -> Any:
    """A pydantic-ai ``FunctionModel`` that calls the tool ``step`` ``steps`` times (None:
    forever) and then answers; every response costs ``per_response`` tokens. With a
    ``barrier``, each run's first request waits there."""
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = sum(1 for m in messages for p in m.parts if p.part_kind == "tool-return")
        if done == 0 and barrier is not None:
            await barrier.wait()
        if steps is not None and done >= steps:
            response = ModelResponse(parts=[TextPart(f"answered after {done} steps")])
        else:
            response = ModelResponse(parts=[ToolCallPart("step", {})])
        response.usage = tokens(per_response)
        return response

    return FunctionModel(model)


class FakeClock:
    """A clock for ``RateLimit(clock=...)`` that moves only when told (``advance``)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.time = start
        self._sleepers: list[tuple[float, anyio.Event]] = []

    def now(self) -> float:
        return self.time

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self.time:
            await anyio.lowlevel.checkpoint()
            return
        entry = (deadline, anyio.Event())
        self._sleepers.append(entry)
        try:
            await entry[1].wait()
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    @property
    def sleeping(self) -> int:
        """How many tasks are waiting for a later time."""
        return len(self._sleepers)

    async def until_sleeping(self, count: int = 1) -> None:
        """Until ``count`` tasks wait on this clock (they may be on another thread: a
        worker's loop), at most 10 s."""
        with anyio.fail_after(10):  # a bound on the test, not a measurement
            while len(self._sleepers) < count:
                await anyio.sleep(0.005)  # polling: the sleepers may be on another thread

    def next_deadline(self) -> float | None:
        return min((deadline for deadline, _ in self._sleepers), default=None)

    def advance_to(self, when: float) -> None:
        """Move the time to ``when`` and wake every sleeper whose deadline has come."""
        self.time = max(self.time, when)
        for entry in list(self._sleepers):
            if entry[0] <= self.time:
                self._sleepers.remove(entry)
                entry[1].set()

    async def run_until_idle(self, done: Callable[[], bool]) -> None:
        """Jump from deadline to deadline while tasks sleep, until ``done()``: a discrete
        event simulation of the waits (every other task is blocked when time moves)."""
        idle_rounds = 0
        while True:
            await anyio.wait_all_tasks_blocked()
            if done():
                return
            deadline = self.next_deadline()
            if deadline is None:
                # On asyncio a finished task's done-callbacks may still be queued while every
                # task looks blocked: let the loop run them before concluding.
                idle_rounds += 1
                if idle_rounds > 100:
                    raise AssertionError("nothing sleeps on the clock and the work is not done")
                await anyio.lowlevel.checkpoint()
                continue
            idle_rounds = 0
            self.advance_to(deadline)
