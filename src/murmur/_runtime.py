"""AgentRuntime: run, gather and their sync twins, over AnyIO task groups."""

from __future__ import annotations

import importlib
import weakref
from collections.abc import Iterable, Sequence
from functools import partial
from time import perf_counter
from typing import Any

import anyio
import sniffio

from ._agents import AgentImpl, AgentLike, resolve_agent
from ._batch import BatchGuard, Tally, run_pool
from ._bridge import AsyncioBridge
from ._caller import TaskRunner
from ._cancellation import pending_cancellations, running_task
from ._context import AgentContext, CallOrigin, _current
from ._executor import Executor
from ._host import Host
from ._options import RuntimeOptions
from ._pipeline import Stage, split_by_side
from ._types import AgentResult, TaskSpec, Usage, new_task_id
from .errors import (
    InvalidStateError,
    InvalidTypeError,
    InvalidValueError,
    RuntimeClosedError,
)
from .events.log import LogEventEmitter, log_exception
from .events.types import (
    ALL_EVENT_TYPES,
    EventEmitter,
    EventError,
    EventType,
    RuntimeEvent,
    emitter_stages,
    wanted_types,
)
from .groups import AgentGroup, GroupResult
from .groups.scheduler import run_group as _run_group
from .middleware import (
    CostTrackingMiddleware,
    DepthLimitMiddleware,
    RateLimitMiddleware,
    RetryMiddleware,
    TimeoutMiddleware,
)
from .transport.base import Transport
from .transport.local import LocalTransport

__all__ = ["AgentRuntime"]


class AgentRuntime:
    """Runs agents: one task (``run``), a batch (``gather``), in-process or on workers.

    Args:
        options: Policies for every call (``RuntimeOptions``); defaults apply when omitted.
        middleware: Extra pipeline stages, each ``async def __call__(self, ctx, call_next)``.
        transport: Where tasks execute; in-process by default.
        event_emitter: Receives every ``RuntimeEvent`` (``async def emit(self, event)``);
            default ``LogEventEmitter()``, which writes them to the application's logs
            (structlog if configured, else the standard ``logging`` logger ``murmur.events``).
        broker: A broker URL for distributed mode (``redis://``, ``rediss://``, ``nats://``,
            ``amqp://``, ``amqps://``, ``kafka://``, or ``memory://`` in-process): tasks are
            published there and run by ``murmur worker`` processes serving the agents.

    A runtime owns an asyncio helper loop under Trio (for pydantic-ai) and, in distributed
    mode, broker connections. Release them with ``async with AgentRuntime() as runtime:``
    or ``await runtime.aclose()``; otherwise they go when the runtime is garbage-collected
    or the process exits.
    """

    def __init__(
        self,
        *,
        options: RuntimeOptions | None = None,
        middleware: Sequence[Stage] = (),
        transport: Transport | None = None,
        event_emitter: EventEmitter | None = None,
        broker: str | None = None,
    ) -> None:
        if options is None:
            options = RuntimeOptions()
        elif not isinstance(options, RuntimeOptions):
            raise InvalidTypeError(
                f"options must be a murmur.RuntimeOptions, got {type(options).__name__}"
            )
        if broker is not None:
            if transport is not None:
                raise InvalidValueError(
                    "give broker= (a URL) or transport=, not both: broker= builds the transport"
                )
            transport = _broker_transport(broker)
        stages = _checked_stages(middleware, "middleware")
        if transport is not None and not isinstance(transport, Transport):
            raise InvalidTypeError(
                f"transport must be a murmur.transport.Transport, got {type(transport).__name__}"
            )
        if event_emitter is None:
            event_emitter = LogEventEmitter()
        elif not callable(getattr(event_emitter, "emit", None)):
            raise InvalidTypeError(
                "event_emitter must have `async def emit(self, event)`, "
                f"got {type(event_emitter).__name__}"
            )
        # Stages an emitter needs around every attempt (OpenTelemetry's current span) go
        # outermost on the executor side, so they enclose the user's stages and the agent.
        own = _checked_stages(emitter_stages(event_emitter), "event_emitter.pipeline_stages()")
        caller_user, executor_user = split_by_side(stages, "middleware")
        if transport is not None and executor_user:
            index = stages.index(executor_user[0])
            raise InvalidValueError(
                f"middleware[{index}] runs on the executor side, but this runtime's attempts "
                "run elsewhere (transport=...): give it to the Executor that runs them, or "
                "mark it `side = 'caller'`"
            )
        caller_stages, executor_stages = _policy_stages(options, caller_user, executor_user)
        if transport is not None:
            # Attempts run elsewhere: an emitter's stages (OpenTelemetry's current task span)
            # enclose the sending of each attempt here, whose envelope carries that context.
            caller_stages, own = [*caller_stages, *own], []
        self._core = _RuntimeCore(
            self,
            options,
            event_emitter,
            caller_stages=caller_stages,
            executor_stages=[*own, *executor_stages],
            transport=transport,
        )
        for stage in caller_stages:
            if isinstance(stage, (RateLimitMiddleware, CostTrackingMiddleware)):
                stage.use_bridge(self._core._asyncio_bridge)

    @property
    def options(self) -> RuntimeOptions:
        """The runtime's options."""
        return self._core.options

    # -- public API ----------------------------------------------------------------------

    async def run(self, agent: AgentLike, task: TaskSpec) -> AgentResult[Any]:
        """Run one task.

        Args:
            agent: A ``murmur.Agent``, a ``pydantic_ai.Agent``, ``from_pydantic_ai(...)``,
                or an async function ``f(input)`` / ``f(input, ctx)``.
            task: The task.

        Returns:
            The task's ``AgentResult``; an agent failure is an error result, not an exception.

        Raises:
            TypeError: ``agent`` is not an agent, or ``task`` not a ``TaskSpec``.
            RuntimeClosedError: the runtime was closed.
        """
        parent = _spawning_context(self._core)
        if parent is not None:
            # Called from inside one of this runtime's running tasks: that task's child
            # (else it would wait on the budget and the cap its own ancestor holds).
            return await parent.run(agent, task)
        return await self._core.run_task(agent, task, parent=None)

    async def gather(
        self,
        agent: AgentLike,
        tasks: Iterable[TaskSpec],
        *,
        max_concurrency: int | None = None,
        fail_fast: bool = False,
    ) -> list[AgentResult[Any]]:
        """Run a batch of tasks on one agent, at most ``max_concurrency`` at a time.

        Args:
            agent: Anything ``run`` accepts.
            tasks: The tasks; results come back in the same order.
            max_concurrency: Hard cap on tasks in flight (default: the options' value, 100).
            fail_fast: If true, the first failure cancels the rest; their results carry a
                ``TaskCancelledError``.

        Returns:
            One ``AgentResult`` per task, in input order; failures stay in their slots.

        Raises:
            TypeError: ``agent`` is not an agent, or a task is not a ``TaskSpec``.
            ValueError: ``max_concurrency`` < 1.
            RuntimeClosedError: the runtime was closed.
        """
        if isinstance(tasks, TaskSpec):
            raise InvalidTypeError(
                "gather() takes an iterable of TaskSpec, got a single TaskSpec: run one task "
                "with `await runtime.run(agent, task)`, or pass a list: "
                "`runtime.gather(agent, [task])`"
            )
        parent = _spawning_context(self._core)
        if parent is not None:
            return await parent.gather(
                agent, tasks, max_concurrency=max_concurrency, fail_fast=fail_fast
            )
        return await self._core.run_batch(
            agent, tasks, max_concurrency=max_concurrency, fail_fast=fail_fast, parent=None
        )

    def run_sync(
        self, agent: AgentLike, task: TaskSpec, *, backend: str = "asyncio"
    ) -> AgentResult[Any]:
        """``run`` from synchronous code: starts an event loop (``backend``) for the call."""
        _check_no_running_loop("run_sync", "run")
        return anyio.run(partial(self.run, agent, task), backend=backend)

    def gather_sync(
        self,
        agent: AgentLike,
        tasks: Iterable[TaskSpec],
        *,
        max_concurrency: int | None = None,
        fail_fast: bool = False,
        backend: str = "asyncio",
    ) -> list[AgentResult[Any]]:
        """``gather`` from synchronous code: starts an event loop (``backend``) for the call."""
        _check_no_running_loop("gather_sync", "gather")
        call = partial(
            self.gather, agent, tasks, max_concurrency=max_concurrency, fail_fast=fail_fast
        )
        return anyio.run(call, backend=backend)

    async def aclose(self) -> None:
        """Release everything the runtime owns. Idempotent; the runtime is unusable after."""
        await self._core.aclose()

    async def __aenter__(self) -> AgentRuntime:
        self._core.check_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- agent groups --------------------------------------------------------------------

    async def run_group(
        self, group: AgentGroup, task: TaskSpec, *, parent: AgentContext | None = None
    ) -> GroupResult:
        """Run an ``AgentGroup``: each node starts as soon as its inputs are ready.

        Args:
            group: The group.
            task: The group's task; its input goes to the entry node(s).
            parent: Inside an agent, its ``AgentContext``: the nodes then run as its
                children (one spawn level deeper, same trace and budget). Default: the
                task this call is made from, if it is one of this runtime's; else the
                nodes run at depth 0.

        Returns:
            The ``GroupResult``; node failures are in it, not raised.

        Raises:
            TypeError: ``group`` is not an ``AgentGroup``, or ``task`` not a ``TaskSpec``.
            RuntimeClosedError: the runtime was closed.
        """
        if parent is None:
            parent = _spawning_context(self._core)
        if isinstance(parent, AgentContext) and parent.origin.host is self._core:
            # As ctx.run_group: from a bridged agent's tool, the group runs back home.
            return await parent.run_group(group, task)
        return await self._core.run_group(group, task, parent=parent)

    def __murmur_host__(self) -> Host:
        """The interface the layers below the runtime use (the group scheduler, contexts)."""
        return self._core

    @property
    def _stages(self) -> tuple[Stage, ...]:
        """Every stage of the in-process pipeline, outermost first (for tests and tools)."""
        return self._core.stages


def _broker_transport(broker: object) -> Transport:
    """The transport for ``broker=URL``: the distributed layer, looked up by name.

    The core never imports ``murmur.distributed`` (the layers contract); this is the one
    place it is named, late, so ``import murmur`` loads none of it.
    """
    module = importlib.import_module("murmur.distributed._transport")
    transport: Transport = module.BrokerTransport(broker)
    return transport


def _spawning_context(host: Host) -> AgentContext | None:
    """The running task of ``host`` this call is made from, if any: its context is current
    here (the task itself, its tools and stages, or a task it started) and it has not ended."""
    ctx = _current.get()
    if ctx is None or ctx._finished or ctx.origin.host is not host:
        return None
    return ctx


def _check_input(impl: AgentImpl, task: TaskSpec, field: str) -> None:
    """Refuse, before anything runs, an input the agent could never be handed."""
    problem = impl.input_problem(task.input)
    if problem is not None:
        raise InvalidTypeError(f"{field}.input for agent {impl.name!r}: {problem}")


def _check_no_running_loop(name: str, instead: str) -> None:
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return
    raise InvalidStateError(
        f"{name}() starts its own event loop, but one ({library}) is already running in this "
        f"thread (in Jupyter, or inside async code): use `await runtime.{instead}(...)` "
        "instead"
    )


def _checked_stages(stages: Iterable[Any], field: str) -> list[Stage]:
    """``stages`` as a list, each checked to be callable (``field`` names them in errors)."""
    checked = list(stages)
    for index, stage in enumerate(checked):
        if not callable(stage):
            raise InvalidTypeError(
                f"{field}[{index}] must be a stage with "
                f"`async def __call__(self, ctx, call_next)`, got {stage!r}"
            )
    return checked


def _policy_stages(
    options: RuntimeOptions, caller_user: Sequence[Stage], executor_user: Sequence[Stage]
) -> tuple[list[Stage], list[Stage]]:
    """The pipeline, outermost first, split by side: depth → budget → retry → rate limits →
    the user's caller-side stages | the user's executor-side stages → timeout.

    Rate limits sit inside retry: every attempt is a request to the model, admitted anew.
    """
    stages: list[Stage] = []
    if options.max_spawn_depth is not None:
        stages.append(DepthLimitMiddleware(options.max_spawn_depth))
    if options.token_budget is not None:
        stages.append(CostTrackingMiddleware(options.token_budget))
    if options.retry_max_attempts > 1:
        stages.append(
            RetryMiddleware(
                options.retry_max_attempts,
                initial_delay=options.retry_initial_delay,
                backoff_factor=options.retry_backoff_factor,
                max_delay=options.retry_max_delay,
                jitter=options.retry_jitter,
                retry_on=options.retry_on,
            )
        )
    if options.rate_limits:
        stages.append(RateLimitMiddleware(options.rate_limits, estimator=options.token_estimator))
    stages.extend(caller_user)
    executor = list(executor_user)
    if options.timeout_seconds is not None:
        executor.append(TimeoutMiddleware(options.timeout_seconds))
    return stages, executor


class _RuntimeCore(Host):
    """What an ``AgentRuntime`` owns and does, behind the ``Host`` interface.

    The public ``AgentRuntime`` checks its arguments and hands over; agents spawning
    children (``AgentContext``) and the group scheduler reach this through ``Host``.
    """

    def __init__(
        self,
        runtime: AgentRuntime,
        options: RuntimeOptions,
        emitter: EventEmitter,
        *,
        caller_stages: Sequence[Stage],
        executor_stages: Sequence[Stage],
        transport: Transport | None,
    ) -> None:
        self._runtime = runtime
        self._options = options
        self._emitter = emitter
        self._emitter_failed = False
        self._bridge: AsyncioBridge | None = None
        self._closed = False
        self._remote = transport is not None
        if transport is None:
            executor = Executor(executor_stages, bridge=self._asyncio_bridge)
            self.transport: Transport = LocalTransport(executor)
            self.stages: tuple[Stage, ...] = (*caller_stages, *executor.stages)
            self._runner = TaskRunner(caller_stages, executor=executor)
        else:
            self.transport = transport
            self.stages = tuple(caller_stages)
            self._runner = TaskRunner(
                caller_stages,
                executor=None,
                transport=transport,
                attempt_timeout=options.timeout_seconds,
                max_spawn_depth=options.max_spawn_depth,
            )

    @property
    def runtime(self) -> AgentRuntime:
        return self._runtime

    @property
    def options(self) -> RuntimeOptions:
        return self._options

    def check_open(self) -> None:
        if self._closed:
            raise RuntimeClosedError("this AgentRuntime was closed; create a new one")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Shielded: a runtime left by a cancellation (its `async with` cancelled from
        # outside) still ends its connections and its helper thread.
        with anyio.CancelScope(shield=True):
            try:
                for stage in self.stages:
                    if isinstance(stage, (RateLimitMiddleware, CostTrackingMiddleware)):
                        await stage.aclose()
                await self.transport.aclose()
            finally:
                bridge, self._bridge = self._bridge, None
                if bridge is not None:
                    await bridge.aclose()

    # -- calls -------------------------------------------------------------------------

    async def run_task(
        self,
        agent: AgentLike,
        task: TaskSpec,
        *,
        parent: AgentContext | None,
        trace_id: str | None = None,
        tally: Tally | None = None,
        parent_call_id: str | None = None,
        announce: bool = False,
    ) -> AgentResult[Any]:
        impl = resolve_agent(agent)
        if not isinstance(task, TaskSpec):
            raise InvalidTypeError(
                f"task must be a murmur.TaskSpec, got {type(task).__name__}; "
                "wrap the input as TaskSpec(input=...)"
            )
        if impl.checks_input:
            _check_input(impl, task, "task")
        if announce and parent is not None:
            self.check_open()  # a spawn refused by a closed runtime is no spawn either
            await parent._spawned(impl.name, 1)
        origin = self.open_call(impl, parent, trace_id=trace_id, parent_call_id=parent_call_id)
        # The task runs in this very task: cancellations pending here are not for it.
        origin.cancels = pending_cancellations()
        if tally is not None:
            origin.cancelled = tally.ledger
        return await self._runner.run(impl, task, origin)

    async def run_batch(
        self,
        agent: AgentLike,
        tasks: Iterable[TaskSpec],
        *,
        max_concurrency: int | None,
        fail_fast: bool,
        parent: AgentContext | None,
        trace_id: str | None = None,
        tally: Tally | None = None,
        parent_call_id: str | None = None,
        announce: bool = False,
    ) -> list[AgentResult[Any]]:
        impl = resolve_agent(agent)
        limit = self._options.max_concurrency if max_concurrency is None else max_concurrency
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidValueError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
        if isinstance(tasks, (str, bytes, TaskSpec)) or not isinstance(tasks, Iterable):
            raise InvalidTypeError(
                f"tasks must be an iterable of murmur.TaskSpec, got {type(tasks).__name__}"
            )
        specs = list(tasks)
        for index, spec in enumerate(specs):
            if not isinstance(spec, TaskSpec):
                raise InvalidTypeError(
                    f"tasks[{index}] must be a murmur.TaskSpec, got {type(spec).__name__}; "
                    "wrap each input as TaskSpec(input=...)"
                )
            if impl.checks_input:
                _check_input(impl, spec, f"tasks[{index}]")
        if announce and parent is not None:
            self.check_open()
            await parent._spawned(impl.name, len(specs))
        origin = self.open_call(impl, parent, trace_id=trace_id, parent_call_id=parent_call_id)
        # The tasks run in fresh worker tasks (baseline 0); the batch's own events are
        # emitted here, in the caller's task.
        origin.caller_task = running_task()
        origin.caller_cancels = pending_cancellations()
        if tally is None:
            tally = Tally()
        # Tasks cut off mid-run record what they spent there (fail_fast builds their results).
        origin.cancelled = tally.ledger
        count = len(specs)
        if count == 0:
            tally.slots[:] = []
            return []
        guard = None
        if self._remote:
            # Its attempts run elsewhere: cancelled as a whole, it is revoked as a whole.
            guard = BatchGuard(new_task_id(), self.transport.revoke_batch)
            origin.batch_id = guard.batch_id
        started = perf_counter()
        await self.emit_call_event(
            origin,
            EventType.BATCH_STARTED,
            impl.name,
            {"size": count, "max_concurrency": limit, "fail_fast": fail_fast},
        )
        # pydantic-ai agents always suspend: their pool may as well start whole.
        results = await run_pool(
            specs,
            self._runner.run,
            impl,
            origin,
            agent=impl.name,
            limit=limit,
            fail_fast=fail_fast,
            start_whole=impl.asyncio_only,
            tally=tally,
            guard=guard,
        )
        if EventType.BATCH_COMPLETED in origin.wants:
            failed_count = sum(1 for r in results if r.error is not None)
            await self.emit_call_event(
                origin,
                EventType.BATCH_COMPLETED,
                impl.name,
                {"size": count, "succeeded": count - failed_count, "failed": failed_count},
                duration=perf_counter() - started,
            )
        return results

    async def run_group(
        self, group: AgentGroup, task: TaskSpec, *, parent: AgentContext | None
    ) -> GroupResult:
        return await _run_group(self, group, task, parent=parent)

    def open_call(
        self,
        impl: AgentImpl | None,
        parent: AgentContext | None,
        *,
        trace_id: str | None = None,
        parent_call_id: str | None = None,
    ) -> CallOrigin:
        """What one call's tasks share; ``trace_id`` continues a trace (e.g. a group's), and
        ``parent_call_id`` names the call it runs for (a group's, for its nodes' calls)."""
        self.check_open()
        bridge = None
        if impl is not None and impl.asyncio_only and sniffio.current_async_library() != "asyncio":
            bridge = self._asyncio_bridge()
        if parent is None:
            wanted = wanted_types(self._emitter)
            origin = CallOrigin(
                self,
                trace_id=trace_id or new_task_id(),
                depth=0,
                parent=None,
                bridge=bridge,
                wants=ALL_EVENT_TYPES if wanted is None else wanted,
                emit=self._emitter.emit,
                emit_failed=self.emitter_failed,
                parent_call_id=parent_call_id,
            )
            origin.outer = _current.get()
            return origin
        above = parent.origin
        # Children report where their parent does: here, this runtime's emitter; for a task
        # that arrived from another process (a worker's), back to its caller.
        origin = CallOrigin(
            self,
            trace_id=parent.trace_id,
            depth=parent.depth + 1,
            parent=parent,
            bridge=bridge,
            wants=above.wants,
            emit=above.emit,
            emit_failed=above.emit_failed,
            parent_call_id=parent_call_id,
        )
        origin.max_spawn_depth = above.max_spawn_depth
        origin.deadline = above.deadline
        return origin

    def _asyncio_bridge(self) -> AsyncioBridge:
        bridge = self._bridge
        if bridge is None:
            bridge = self._bridge = AsyncioBridge()
            # Without aclose(), the loop thread goes when the runtime is collected or at exit.
            weakref.finalize(self, bridge.close)
        return bridge

    # -- events ------------------------------------------------------------------------

    def emitter_failed(self, event: RuntimeEvent) -> None:
        # An emitter must never fail a run: isolate it, and say so once.
        if not self._emitter_failed:
            self._emitter_failed = True
            log_exception(
                "event emitter failed; later failures of it are not logged",
                emitter=type(self._emitter).__name__,
                event_type=str(event.type),
            )

    async def emit_call_event(
        self,
        origin: CallOrigin,
        type: EventType,
        agent: str,
        data: dict[str, Any],
        duration: float | None = None,
        *,
        task_id: str | None = None,
        usage: Usage | None = None,
        error: BaseException | None = None,
    ) -> None:
        if type not in origin.wants:
            return
        await origin.emit_isolated(
            RuntimeEvent._build(
                type,
                origin.trace_id,
                task_id,
                origin.parent_task_id,
                agent,
                origin.depth,
                None,
                duration,
                usage,
                None if error is None else EventError.from_exception(error),
                data,
                call_id=origin.call_id,
                parent_call_id=origin.parent_call_id,
            )
        )
