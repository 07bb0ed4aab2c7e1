"""The per-task context: what an agent (and every pipeline stage) sees of its task."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from functools import partial
from time import time as _now
from typing import TYPE_CHECKING, Any

from ._cancellation import is_stray, running_task
from ._types import ZERO_USAGE, AgentResult, TaskSpec, Usage, new_task_id
from .errors import InvalidStateError, InvalidValueError, NoTaskContextError
from .events.types import EventError, EventType, RuntimeEvent, _trusted_event

if TYPE_CHECKING:
    from ._agents import AgentImpl, AgentLike
    from ._bridge import AsyncioBridge, HomePortal
    from ._envelope import EventSink, TaskEnvelope
    from ._host import Host
    from ._runtime import AgentRuntime
    from .groups import AgentGroup, GroupResult

__all__ = ["AgentContext", "CallOrigin", "Ledger", "current_context"]

#: What tasks cut off mid-run had spent, by task id: (usage, attempts, seconds) per task
#: (a list: one batch may hold several tasks with the same id).
Ledger = dict[str, list[tuple[Usage, int, float]]]


class CallOrigin:
    """What the tasks of one ``run``/``gather`` call share: host, trace, depth, parent.

    In-process, ``host`` is the runtime that made the call. An executor running a task
    envelope from elsewhere builds one with ``from_envelope``: no host unless the executor
    has one for spawns (else its tasks cannot
    spawn children), and events go to the envelope's sink.
    """

    __slots__ = (
        "batch_id",
        "bridge",
        "call_id",
        "caller_cancels",
        "caller_task",
        "cancelled",
        "cancels",
        "deadline",
        "depth",
        "emit",
        "emit_failed",
        "event_template",
        "host",
        "max_spawn_depth",
        "outer",
        "parent",
        "parent_call_id",
        "parent_task_id",
        "trace_id",
        "wants",
    )

    def __init__(
        self,
        host: Host | None,
        *,
        trace_id: str,
        depth: int,
        parent: AgentContext | None,
        bridge: AsyncioBridge | None,
        wants: frozenset[EventType],
        emit: Callable[[RuntimeEvent], Awaitable[None]],
        emit_failed: Callable[[RuntimeEvent], None],
        parent_call_id: str | None = None,
        call_id: str | None = None,
        parent_task_id: str | None = None,
    ) -> None:
        self.host = host
        #: The event types the runtime's emitter wants; others are never built.
        self.wants = wants
        #: The emitter's ``emit``, called inline on the per-task hot path; whoever calls it
        #: passes a failure to ``emit_failed`` (an emitter must never fail a run).
        self.emit = emit
        self.emit_failed = emit_failed
        self.trace_id = trace_id
        self.depth = depth
        self.parent = parent
        self.parent_task_id = parent.task.task_id if parent is not None else parent_task_id
        self.bridge = bridge
        #: This call's own id in events (a batch's tasks share it with the batch events),
        #: and the enclosing call's (a group's, for the calls running its nodes).
        self.call_id = call_id if call_id is not None else (new_task_id() if wants else None)
        self.parent_call_id = parent_call_id
        #: The id its attempts carry to be revoked together (a batch whose attempts run
        #: elsewhere; see ``BatchGuard``), whether or not events are wanted.
        self.batch_id: str | None = None
        #: Cancellation requests the task running this call's tasks had pending when they
        #: started (asyncio; see ``_cancellation``): only later ones were sent to them.
        self.cancels = 0
        #: The task that made the call (asyncio) and its pending cancellation requests then:
        #: the baseline for what the call itself does there (its batch and group events).
        self.caller_task: object | None = None
        self.caller_cancels = 0
        #: The context that was current where the call was made (a task of another runtime
        #: calling this one from inside), if any.
        self.outer: AgentContext | None = None
        #: Set by a caller that builds results for tasks cancelled mid-run (``fail_fast``):
        #: the executor records what each spent there, by task id (usage, attempts, seconds).
        self.cancelled: Ledger | None = None
        #: The spawn depth limit this call's tasks inherited from an envelope (a task that
        #: arrived from another process, and the children it spawns here); ``None`` when
        #: the runtime's own ``DepthLimitMiddleware`` (or none) applies.
        self.max_spawn_depth: int | None = None
        #: The absolute deadline (``time.time()``) inherited from an envelope, likewise: the
        #: children spawned here must not outlive the attempt that spawned them.
        self.deadline: float | None = None
        #: Every field of this call's task events in order, the shared ones filled in: a task
        #: event is a copy of it with the per-event fields set (cheaper than building anew).
        #: Empty when the emitter wants no events: then none is ever built.
        self.event_template: dict[str, Any] = (
            {}
            if not wants
            else {
                "type": None,
                "timestamp": None,
                "trace_id": trace_id,
                "task_id": None,
                "parent_task_id": self.parent_task_id,
                "call_id": self.call_id,
                "parent_call_id": parent_call_id,
                "agent": None,
                "depth": depth,
                "attempt": None,
                "duration": None,
                "usage": None,
                "error": None,
                "data": None,
            }
        )

    @classmethod
    def from_envelope(
        cls,
        envelope: TaskEnvelope,
        sink: EventSink,
        bridge: AsyncioBridge | None,
        host: Host | None = None,
    ) -> CallOrigin:
        """The origin of an attempt that arrived as an envelope, its events going to ``sink``;
        ``host`` runs the children it spawns (none without)."""
        wants = _wanted(envelope.wants)
        origin = cls(
            host,
            trace_id=envelope.trace_id,
            depth=envelope.depth,
            parent=None,
            bridge=bridge,
            wants=wants,
            emit=sink.emit,
            emit_failed=_ignore_failed_emit,
            parent_call_id=envelope.parent_call_id,
            call_id=envelope.call_id,
            parent_task_id=envelope.parent_task_id,
        )
        origin.max_spawn_depth = envelope.max_spawn_depth
        origin.deadline = envelope.deadline
        return origin

    async def emit_isolated(self, event: RuntimeEvent) -> None:
        """Hand ``event`` over; a failure of the emitter is reported, never raised."""
        try:
            await self.emit(event)
        except Exception:
            self.emit_failed(event)
        except BaseException as exc:
            caller = self.caller_task is not None and self.caller_task is running_task()
            if not is_stray(exc, self.caller_cancels if caller else self.cancels):
                raise
            self.emit_failed(event)


_EVENT_BY_NAME = {str(kind): kind for kind in EventType}
#: ``wants`` as sent, read: a caller sends the same few sets with every attempt.
_WANTS_READ: dict[frozenset[str], frozenset[EventType]] = {}
_WANTS_READ_MAX = 256


def _wanted(names: frozenset[str]) -> frozenset[EventType]:
    """The event types named in ``names`` (a newer caller's names this process does not
    know are left out)."""
    wanted = _WANTS_READ.get(names)
    if wanted is None:
        wanted = frozenset(_EVENT_BY_NAME[name] for name in names if name in _EVENT_BY_NAME)
        if len(_WANTS_READ) >= _WANTS_READ_MAX:
            _WANTS_READ.clear()
        _WANTS_READ[names] = wanted
    return wanted


def _ignore_failed_emit(event: RuntimeEvent) -> None:
    """An envelope's sink isolates its own failures: nothing more to do here."""


class AgentContext:
    """One task's context, passed to ``async def f(input, ctx)`` and to pipeline stages.

    Stages may replace ``task`` (it is re-validated at dispatch) and keep per-task notes in
    ``state``. Agents report usage with ``report_usage`` and spawn children with ``run`` and
    ``gather``: children share the runtime, budget and trace, one level deeper.
    """

    __slots__ = (
        "_budget",
        "_capped_run",
        "_finished",
        "_input_tokens",
        "_origin",
        "_outer",
        "_output_tokens",
        "_rate_limit_wait",
        "_requests",
        "_state",
        "_task_id",
        "_tool_calls",
        "_worker",
        "attempt",
        "home",
        "impl",
        "task",
        "token_cap",
    )

    def __init__(self, origin: CallOrigin, impl: AgentImpl, task: TaskSpec) -> None:
        self._origin = origin
        self.impl = impl
        self.task = task
        #: The attempt now running, 1-based; 0 until the first dispatch.
        self.attempt = 0
        #: Tokens this task may still spend, set while a ``TokenBudget`` reservation is held;
        #: pydantic-ai runs are capped at what is left of it.
        self.token_cap: int | None = None
        #: The ``TokenBudget`` that reservation comes from, directly or lent (while held).
        self._budget: Any = None
        #: Set while the agent runs on the asyncio bridge under Trio: the way back home.
        self.home: HomePortal | None = None
        self._input_tokens = 0
        self._output_tokens = 0
        self._requests = 0
        self._tool_calls = 0
        #: Seconds this task waited for rate limits (``AgentResult.rate_limit_wait``).
        self._rate_limit_wait = 0.0
        #: The worker that ran the last attempt, when attempts run elsewhere
        #: (``AgentResult.worker``).
        self._worker: str | None = None
        self._state: dict[str, Any] | None = None
        #: While a capped pydantic-ai run is in flight: its (UsageLimits, RunUsage), which
        #: children that borrow from this task's reservation share.
        self._capped_run: tuple[Any, Any] | None = None
        #: Set once the task is over: it may spawn no more children.
        self._finished = False

    @property
    def agent(self) -> str:
        """The running agent's name."""
        return self.impl.name

    @property
    def runtime(self) -> AgentRuntime:
        """The runtime that runs this task.

        Raises:
            RuntimeError: the task arrived from another process (no runtime here).
        """
        return self._host().runtime

    @property
    def trace_id(self) -> str:
        """Shared by every task of one top-level call, children included."""
        return self._origin.trace_id

    @property
    def depth(self) -> int:
        """0 for a task started by the caller, +1 per spawn level."""
        return self._origin.depth

    @property
    def parent(self) -> AgentContext | None:
        """The context of the task that spawned this one, if any."""
        return self._origin.parent

    @property
    def parent_task_id(self) -> str | None:
        """The ``task_id`` of the spawning task, if any."""
        return self._origin.parent_task_id

    @property
    def origin(self) -> CallOrigin:
        """What this task shares with the other tasks of its call."""
        return self._origin

    @property
    def state(self) -> dict[str, Any]:
        """Free-form per-task notes for pipeline stages."""
        if self._state is None:
            self._state = {}
        return self._state

    @property
    def usage(self) -> Usage:
        """Usage reported so far by this task, over all its attempts."""
        if not (self._input_tokens or self._output_tokens or self._requests or self._tool_calls):
            return ZERO_USAGE
        return Usage.model_construct(
            input_tokens=self._input_tokens,
            output_tokens=self._output_tokens,
            requests=self._requests,
            tool_calls=self._tool_calls,
        )

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens reported so far (what a ``TokenBudget`` charges)."""
        return self._input_tokens + self._output_tokens

    def report_usage(
        self,
        usage: Any = None,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        requests: int = 0,
        tool_calls: int = 0,
    ) -> None:
        """Add usage to this task: a ``Usage``, a pydantic-ai ``RunUsage``, or counts.

        Raises:
            ValueError: a count is negative.
        """
        if usage is not None:
            if not isinstance(usage, Usage):
                usage = Usage.from_pydantic_ai(usage)
            input_tokens += usage.input_tokens
            output_tokens += usage.output_tokens
            requests += usage.requests
            tool_calls += usage.tool_calls
        if min(input_tokens, output_tokens, requests, tool_calls) < 0:
            raise InvalidValueError("report_usage() counts must be >= 0")
        self._input_tokens += input_tokens
        self._output_tokens += output_tokens
        self._requests += requests
        self._tool_calls += tool_calls

    async def emit(
        self,
        type: EventType,
        *,
        error: BaseException | None = None,
        duration: float | None = None,
        usage: Usage | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Report an event about this task through the runtime's emitter (if it wants it)."""
        origin = self._origin
        if type not in origin.wants:
            return
        home = self.home
        if home is not None and home.is_away():
            # From the asyncio bridge: emitters are called at home, on the runtime's loop.
            await home.run(
                partial(self.emit, type, error=error, duration=duration, usage=usage, data=data)
            )
            return
        await origin.emit_isolated(self._event(type, error, duration, usage, data))

    def _event(
        self,
        type: EventType,
        error: BaseException | None = None,
        duration: float | None = None,
        usage: Usage | None = None,
        data: dict[str, Any] | None = None,
    ) -> RuntimeEvent:
        """This task's ``RuntimeEvent`` of ``type`` (built without validation: hot path)."""
        values = self._origin.event_template.copy()
        values["type"] = type
        values["timestamp"] = _now()
        values["task_id"] = self.task.task_id
        values["agent"] = self.impl.name
        values["attempt"] = self.attempt
        values["data"] = {} if data is None else data
        if duration is not None:
            values["duration"] = duration
        if usage is not None:
            values["usage"] = usage
        if error is not None:
            values["error"] = EventError.from_exception(error)
        return _trusted_event(values)

    async def run(self, agent: AgentLike, task: TaskSpec) -> AgentResult[Any]:
        """Run a child task one level deeper; see ``AgentRuntime.run``."""
        self._check_running()
        home = self.home
        if home is not None and home.is_away():
            return await home.run(partial(self.run, agent, task))
        return await self._host().run_task(agent, task, parent=self, announce=True)

    async def gather(
        self,
        agent: AgentLike,
        tasks: Iterable[TaskSpec],
        *,
        max_concurrency: int | None = None,
        fail_fast: bool = False,
    ) -> list[AgentResult[Any]]:
        """Run child tasks one level deeper; see ``AgentRuntime.gather``."""
        self._check_running()
        home = self.home
        if home is not None and home.is_away():
            return await home.run(
                partial(
                    self.gather, agent, tasks, max_concurrency=max_concurrency, fail_fast=fail_fast
                )
            )
        return await self._host().run_batch(
            agent,
            tasks,
            max_concurrency=max_concurrency,
            fail_fast=fail_fast,
            parent=self,
            announce=True,
        )

    async def run_group(self, group: AgentGroup, task: TaskSpec) -> GroupResult:
        """Run an ``AgentGroup`` whose nodes are children of this task; see ``run_group``."""
        self._check_running()
        home = self.home
        if home is not None and home.is_away():
            return await home.run(partial(self.run_group, group, task))
        return await self._host().run_group(group, task, parent=self)

    def _host(self) -> Host:
        host = self._origin.host
        if host is None:
            raise InvalidStateError(
                f"the task {self.task.task_id!r} of agent {self.agent!r} runs on an executor "
                "that received it from another process: it has no runtime to spawn "
                "children (run, gather, run_group) on"
            )
        return host

    def _check_running(self) -> None:
        if self._finished:
            raise InvalidStateError(
                f"the task {self.task.task_id!r} of agent {self.agent!r} is over: a context "
                "spawns children (run, gather, run_group) only while its task runs, so that "
                "nothing outlives it (a background task the agent left behind cannot)"
            )

    async def _spawned(self, agent: str, count: int) -> None:
        """Report a spawn of ``count`` tasks of ``agent`` (once the call's input is valid)."""
        if EventType.CHILD_SPAWNED in self._origin.wants:
            await self.emit(EventType.CHILD_SPAWNED, data={"child_agent": agent, "tasks": count})

    def __repr__(self) -> str:
        return (
            f"<AgentContext agent={self.agent!r} task_id={self.task.task_id!r} "
            f"depth={self.depth} attempt={self.attempt}>"
        )


_current: ContextVar[AgentContext | None] = ContextVar("murmur_current_context", default=None)


def current_context() -> AgentContext:
    """The context of the Murmur task running here (inside an agent, its tools, or a stage).

    Raises:
        LookupError: no Murmur task is running in this context.
    """
    ctx = _current.get()
    if ctx is None:
        raise NoTaskContextError(
            "no Murmur task is running here: current_context() works inside agents"
        )
    return ctx
