"""AgentRuntime: run, gather and their sync twins, over AnyIO task groups."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from functools import partial
from time import perf_counter
from typing import Any

import anyio
import sniffio
import structlog

from ._agents import AgentImpl, AgentLike, resolve_agent
from ._bridge import AsyncioBridge
from ._context import AgentContext, CallOrigin, Ledger
from ._executor import Executor
from ._options import RuntimeOptions
from ._pipeline import Stage
from ._types import ZERO_USAGE, AgentResult, TaskSpec, Usage, new_task_id
from .errors import RuntimeClosedError, TaskCancelledError
from .events.log import LogEventEmitter
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
    RetryMiddleware,
    TimeoutMiddleware,
)
from .transport.base import Transport
from .transport.local import LocalTransport

__all__ = ["AgentRuntime"]

_log = structlog.get_logger("murmur")


class AgentRuntime:
    """Runs agents: one task (``run``), a batch (``gather``), in-process or on workers.

    Args:
        options: Policies for every call (``RuntimeOptions``); defaults apply when omitted.
        middleware: Extra pipeline stages, each ``async def __call__(self, ctx, call_next)``.
        transport: Where tasks execute; in-process by default.
        event_emitter: Receives every ``RuntimeEvent`` (``async def emit(self, event)``);
            default ``LogEventEmitter()``, which writes them through structlog.
        broker: A broker URL for distributed mode (not available in this version).

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
            raise TypeError(
                f"options must be a murmur.RuntimeOptions, got {type(options).__name__}"
            )
        if broker is not None:
            raise NotImplementedError(
                "distributed mode (AgentRuntime(broker=...)) is not available in this version; "
                "omit broker= to run in-process"
            )
        stages = _checked_stages(middleware, "middleware")
        if transport is not None and not isinstance(transport, Transport):
            raise TypeError(
                f"transport must be a murmur.transport.Transport, got {type(transport).__name__}"
            )
        if event_emitter is None:
            event_emitter = LogEventEmitter()
        elif not callable(getattr(event_emitter, "emit", None)):
            raise TypeError(
                "event_emitter must have `async def emit(self, event)`, "
                f"got {type(event_emitter).__name__}"
            )
        # Stages an emitter needs around every task (OpenTelemetry's current span) go
        # outermost, so they enclose every policy and every attempt.
        own = _checked_stages(emitter_stages(event_emitter), "event_emitter.pipeline_stages()")
        self._options = options
        self._emitter: EventEmitter = event_emitter
        self._emitter_failed = False
        self._executor = Executor([*own, *_policy_stages(options, stages)])
        self._transport = transport if transport is not None else LocalTransport(self._executor)
        self._bridge: AsyncioBridge | None = None
        self._closed = False

    @property
    def options(self) -> RuntimeOptions:
        """The runtime's options."""
        return self._options

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
        return await self._run(agent, task, parent=None)

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
        return await self._gather(
            agent, tasks, max_concurrency=max_concurrency, fail_fast=fail_fast, parent=None
        )

    def run_sync(
        self, agent: AgentLike, task: TaskSpec, *, backend: str = "asyncio"
    ) -> AgentResult[Any]:
        """``run`` from synchronous code: starts an event loop (``backend``) for the call."""
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
        call = partial(
            self.gather, agent, tasks, max_concurrency=max_concurrency, fail_fast=fail_fast
        )
        return anyio.run(call, backend=backend)

    async def aclose(self) -> None:
        """Release everything the runtime owns. Idempotent; the runtime is unusable after."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._transport.aclose()
        finally:
            bridge, self._bridge = self._bridge, None
            if bridge is not None:
                await bridge.aclose()

    async def __aenter__(self) -> AgentRuntime:
        self._check_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- internals -----------------------------------------------------------------------

    async def _run(
        self,
        agent: AgentLike,
        task: TaskSpec,
        *,
        parent: AgentContext | None,
        trace_id: str | None = None,
        ledger: Ledger | None = None,
        parent_call_id: str | None = None,
        announce: bool = False,
    ) -> AgentResult[Any]:
        """``run``; a ``ledger`` receives what the task spent if it is cancelled mid-run;
        ``announce``: a spawn by ``parent``, reported once the input is known to be valid."""
        impl = resolve_agent(agent)
        if not isinstance(task, TaskSpec):
            raise TypeError(
                f"task must be a murmur.TaskSpec, got {type(task).__name__}; "
                "wrap the input as TaskSpec(input=...)"
            )
        if announce and parent is not None:
            self._check_open()  # a spawn refused by a closed runtime is no spawn either
            await parent._spawned(impl.name, 1)
        origin = self._origin(impl, parent, trace_id, parent_call_id)
        origin.cancelled = ledger
        return await self._transport.submit(impl, task, origin)

    async def _gather(
        self,
        agent: AgentLike,
        tasks: Iterable[TaskSpec],
        *,
        max_concurrency: int | None,
        fail_fast: bool,
        parent: AgentContext | None,
        trace_id: str | None = None,
        ledger: Ledger | None = None,
        into: list[AgentResult[Any] | None] | None = None,
        parent_call_id: str | None = None,
        announce: bool = False,
    ) -> list[AgentResult[Any]]:
        """``gather``. For a caller that may cancel it (a group): ``ledger`` receives what
        tasks cut off mid-run had spent, and ``into`` (a list) the results as they come."""
        impl = resolve_agent(agent)
        limit = self._options.max_concurrency if max_concurrency is None else max_concurrency
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
        if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Iterable):
            raise TypeError(
                f"tasks must be an iterable of murmur.TaskSpec, got {type(tasks).__name__}"
            )
        specs = list(tasks)
        for index, spec in enumerate(specs):
            if not isinstance(spec, TaskSpec):
                raise TypeError(
                    f"tasks[{index}] must be a murmur.TaskSpec, got {type(spec).__name__}; "
                    "wrap each input as TaskSpec(input=...)"
                )
        if announce and parent is not None:
            self._check_open()
            await parent._spawned(impl.name, len(specs))
        origin = self._origin(impl, parent, trace_id, parent_call_id)
        if ledger is not None or fail_fast:
            origin.cancelled = {} if ledger is None else ledger
        count = len(specs)
        results: list[AgentResult[Any] | None] = [None] * count
        if into is not None:
            into[:] = results
            results = into
        if count == 0:
            return []
        started = perf_counter()
        await self._emit_call_event(
            origin,
            EventType.BATCH_STARTED,
            impl.name,
            {"size": count, "max_concurrency": limit, "fail_fast": fail_fast},
        )
        submit = self._transport.submit
        # A pool of at most `limit` workers pulls indices from one shared iterator: the cap
        # holds by construction, and a 100k batch never has 100k coroutines alive at once.
        # The pool grows on demand: a worker starts the next one just before it dispatches,
        # so it grows by one each time work suspends, reaching `limit` at once for I/O-bound
        # agents while agents that never suspend are served by a few workers. pydantic-ai
        # agents always suspend: their pool starts whole.
        indices = iter(range(count))
        max_workers = min(limit, count)
        first_failure: list[AgentResult[Any]] = []
        workers = 0
        spawn_pending = False
        checkpoint_if_cancelled = anyio.lowlevel.checkpoint_if_cancelled
        checkpoint = anyio.lowlevel.checkpoint

        async with anyio.create_task_group() as tg:
            cancel_scope = tg.cancel_scope

            def grow() -> None:
                nonlocal workers, spawn_pending
                workers += 1
                spawn_pending = True
                tg.start_soon(worker)

            async def worker() -> None:
                nonlocal spawn_pending
                spawn_pending = False
                for done, i in enumerate(indices, 1):
                    if first_failure:
                        return  # fail_fast fired: also stops workers whose agents never yield
                    if not spawn_pending and workers < max_workers:
                        grow()
                    result = await submit(impl, specs[i], origin)
                    results[i] = result
                    if fail_fast and result.error is not None and not first_failure:
                        first_failure.append(result)
                        cancel_scope.cancel()
                    # Cancellation is delivered after every task, even to agents that never
                    # suspend; a full yield every 64 keeps such a batch from starving the loop.
                    if done % 64:
                        await checkpoint_if_cancelled()
                    else:
                        await checkpoint()

            # pydantic-ai agents always suspend, so their pool may as well start whole.
            for _ in range(max_workers if impl.asyncio_only else 1):
                grow()

        if first_failure:
            failed = first_failure[0]
            spent = origin.cancelled or {}
            for i, slot in enumerate(results):
                if slot is None:
                    task_id = specs[i].task_id
                    # Cut off mid-run: what it had spent so far; never started: nothing.
                    entries = spent.get(task_id)
                    usage, attempts, duration = entries.pop(0) if entries else _NOTHING_SPENT
                    results[i] = AgentResult._build(
                        output=None,
                        error=TaskCancelledError(
                            f"cancelled by fail_fast: task {failed.task_id!r} of agent "
                            f"{failed.agent!r} failed first"
                        ),
                        usage=usage,
                        attempts=attempts,
                        duration=duration,
                        task_id=task_id,
                        agent=impl.name,
                    )
        if EventType.BATCH_COMPLETED in origin.wants:
            failed_count = sum(1 for r in results if r is not None and r.error is not None)
            await self._emit_call_event(
                origin,
                EventType.BATCH_COMPLETED,
                impl.name,
                {"size": count, "succeeded": count - failed_count, "failed": failed_count},
                duration=perf_counter() - started,
            )
        return results  # type: ignore[return-value]

    def _origin(
        self,
        impl: AgentImpl | None,
        parent: AgentContext | None,
        trace_id: str | None = None,
        parent_call_id: str | None = None,
    ) -> CallOrigin:
        """What one call's tasks share; ``trace_id`` continues a trace (e.g. a group's), and
        ``parent_call_id`` names the call it runs for (a group's, for its nodes' calls)."""
        self._check_open()
        bridge = None
        if impl is not None and impl.asyncio_only and sniffio.current_async_library() != "asyncio":
            bridge = self._asyncio_bridge()
        if parent is None:
            wanted = wanted_types(self._emitter)
            return CallOrigin(
                self,
                trace_id=trace_id or new_task_id(),
                depth=0,
                parent=None,
                bridge=bridge,
                wants=ALL_EVENT_TYPES if wanted is None else wanted,
                parent_call_id=parent_call_id,
            )
        return CallOrigin(
            self,
            trace_id=parent.trace_id,
            depth=parent.depth + 1,
            parent=parent,
            bridge=bridge,
            wants=parent.origin.wants,
            parent_call_id=parent_call_id,
        )

    def _asyncio_bridge(self) -> AsyncioBridge:
        bridge = self._bridge
        if bridge is None:
            bridge = self._bridge = AsyncioBridge()
            # Without aclose(), the loop thread goes when the runtime is collected or at exit.
            weakref.finalize(self, bridge.close)
        return bridge

    async def _emit(self, event: RuntimeEvent) -> None:
        try:
            await self._emitter.emit(event)
        except Exception:
            self._emitter_broke(event)

    def _emitter_broke(self, event: RuntimeEvent) -> None:
        """Called in the ``except`` around a failed ``emit``: isolate it, and say so once."""
        # An emitter must never fail a run.
        if not self._emitter_failed:
            self._emitter_failed = True
            _log.exception(
                "event emitter failed; later failures of it are not logged",
                emitter=type(self._emitter).__name__,
                event_type=str(event.type),
            )

    async def _emit_call_event(
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
        """An event about a whole call (a batch, a group) or a group node, not one attempt."""
        if type not in origin.wants:
            return
        parent = origin.parent
        await self._emit(
            RuntimeEvent._build(
                type,
                origin.trace_id,
                task_id,
                None if parent is None else parent.task.task_id,
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

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeClosedError("this AgentRuntime was closed; create a new one")

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
                nodes run at depth 0.

        Returns:
            The ``GroupResult``; node failures are in it, not raised.

        Raises:
            TypeError: ``group`` is not an ``AgentGroup``, or ``task`` not a ``TaskSpec``.
            RuntimeClosedError: the runtime was closed.
        """
        return await _run_group(self, group, task, parent=parent)


_NOTHING_SPENT: tuple[Usage, int, float] = (ZERO_USAGE, 0, 0.0)


def _checked_stages(stages: Iterable[Any], field: str) -> list[Stage]:
    """``stages`` as a list, each checked to be callable (``field`` names them in errors)."""
    checked = list(stages)
    for index, stage in enumerate(checked):
        if not callable(stage):
            raise TypeError(
                f"{field}[{index}] must be a stage with "
                f"`async def __call__(self, ctx, call_next)`, got {stage!r}"
            )
    return checked


def _policy_stages(options: RuntimeOptions, middleware: Sequence[Stage]) -> list[Stage]:
    """The pipeline, outermost first: depth → budget → retry → user stages → timeout."""
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
    stages.extend(middleware)
    if options.timeout_seconds is not None:
        stages.append(TimeoutMiddleware(options.timeout_seconds))
    return stages
