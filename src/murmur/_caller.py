"""The caller side of the pipeline: one task, from its first attempt to its result.

Its stages (spawn depth, token budget admission and settlement, retry) run where the call
was made, around the attempts. Each attempt goes either straight into the in-process
executor's stages (the fast path: one pipeline, one context) or, through a transport, to
an executor elsewhere as a ``TaskEnvelope``. The task's own events (started, succeeded,
failed, cancelled) and its ``AgentResult`` are made here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter
from time import time as _now
from typing import TYPE_CHECKING, Any

import anyio

from ._cancellation import is_stray, stray_cancellation
from ._context import AgentContext, CallOrigin, _current
from ._envelope import ENVELOPE_VERSION, TaskEnvelope, current_trace_context
from ._pipeline import Stage, compose
from ._types import AgentResult, TaskSpec, trusted_constructor
from .errors import InvalidValueError
from .events.types import EventType

if TYPE_CHECKING:
    from ._agents import AgentImpl
    from ._executor import Executor
    from .transport.base import Transport

__all__ = ["TaskRunner"]


class TaskRunner:
    """Runs tasks through the caller-side stages and their attempts; composed once.

    Args:
        stages: Caller-side stages, outermost first.
        executor: The in-process executor (fast path), or ``None`` to send every attempt
            through ``transport``.
        transport: Where attempts go when there is no in-process executor.
        attempt_timeout: Seconds each attempt may run (sent as a deadline in the envelope).
        max_spawn_depth: The spawn depth limit sent in the envelope (children spawned where
            the attempt runs are held to it there).
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        executor: Executor | None,
        transport: Transport | None = None,
        attempt_timeout: float | None = None,
        max_spawn_depth: int | None = None,
    ) -> None:
        self.stages = tuple(stages)
        if executor is not None:
            self._call = compose(self.stages, executor.pipeline)
            self._call_unsuspending = compose(self.stages, executor.pipeline_unsuspending)
        else:
            if transport is None:
                raise InvalidValueError("a TaskRunner needs an executor or a transport")
            attempt = _RemoteAttempt(transport, attempt_timeout, max_spawn_depth)
            self._call = self._call_unsuspending = compose(self.stages, attempt)

    async def run(self, impl: AgentImpl, task: TaskSpec, origin: CallOrigin) -> AgentResult[Any]:
        """Run ``task`` on ``impl``; agent failures come back as an error result.

        Cancellation is not a failure: it propagates to the caller untouched.
        """
        ctx = AgentContext(origin, impl, task)
        token = _current.set(ctx)  # current_context(), for the agent, its tools, the stages
        wants = origin.wants
        # Task events are built and handed over inline (no helper coroutines): this runs for
        # every task, and an emitter that wants everything should cost as little as possible.
        if _STARTED in wants:
            event = ctx._event(_STARTED)
            try:
                await origin.emit(event)
            except Exception:
                origin.emit_failed(event)
            except BaseException as exc:
                if not is_stray(exc, origin.cancels):
                    _current.reset(token)
                    ctx._finished = True
                    raise
                origin.emit_failed(event)
        start = perf_counter()
        try:
            output = await (self._call if impl.can_suspend else self._call_unsuspending)(ctx)
        except Exception as exc:
            return await self._failed(ctx, exc, start)
        except BaseException as exc:
            stray = stray_cancellation(exc, impl.name, origin.cancels)
            if stray is not None:
                # Not sent to this task (a stage awaited something someone else cancelled).
                return await self._failed(ctx, stray, start)
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                await self._cut_off(ctx, perf_counter() - start)
            raise
        finally:
            ctx._finished = True  # however the task ended, its context spawns no more
            _current.reset(token)
        usage = ctx.usage
        duration = perf_counter() - start
        result = AgentResult._build(
            output,
            None,
            usage,
            ctx.attempt,
            duration,
            task.task_id,
            impl.name,
            ctx._rate_limit_wait,
            ctx._worker,
        )
        if _SUCCEEDED in wants:
            event = ctx._event(_SUCCEEDED, None, duration, usage)
            try:
                await origin.emit(event)
            except Exception:
                origin.emit_failed(event)
            except BaseException as exc:
                if not is_stray(exc, origin.cancels):
                    # Cut off while reporting its success: what it spent is not lost.
                    _record_spend(ctx, duration)
                    raise
                origin.emit_failed(event)
        return result

    @staticmethod
    async def _cut_off(ctx: AgentContext, duration: float) -> None:
        """Record what a task cancelled mid-run spent, report it, and let the caller re-raise."""
        _record_spend(ctx, duration)
        if _CANCELLED in ctx.origin.wants:
            # Report the cancellation, then let it go on: never swallowed.
            with anyio.CancelScope(shield=True):
                await ctx.emit(_CANCELLED, duration=duration, usage=ctx.usage)

    @staticmethod
    async def _failed(ctx: AgentContext, exc: Exception, start: float) -> AgentResult[Any]:
        result = AgentResult._build(
            None,
            exc,
            ctx.usage,
            ctx.attempt,
            perf_counter() - start,
            ctx.task.task_id,
            ctx.agent,
            ctx._rate_limit_wait,
            ctx._worker,
        )
        if _FAILED in ctx.origin.wants:
            await ctx.emit(_FAILED, error=exc, duration=result.duration, usage=result.usage)
        return result


def _record_spend(ctx: AgentContext, duration: float) -> None:
    """Put what a cut-off task spent where its caller builds its result (``fail_fast``)."""
    ledger = ctx.origin.cancelled
    if ledger is not None:
        ledger.setdefault(ctx.task.task_id, []).append((ctx.usage, ctx.attempt, duration))


_STARTED = EventType.TASK_STARTED
_SUCCEEDED = EventType.TASK_SUCCEEDED
_FAILED = EventType.TASK_FAILED
_CANCELLED = EventType.TASK_CANCELLED


class _RemoteAttempt:
    """The innermost caller-side step when attempts run elsewhere: envelope out, result in."""

    def __init__(
        self, transport: Transport, attempt_timeout: float | None, max_spawn_depth: int | None
    ) -> None:
        self._transport = transport
        self._timeout = attempt_timeout
        self._max_depth = max_spawn_depth

    async def __call__(self, ctx: AgentContext) -> Any:
        ctx.attempt += 1
        origin = ctx.origin
        cap = ctx.token_cap
        deadline = None if self._timeout is None else _now() + self._timeout
        if origin.deadline is not None and (deadline is None or origin.deadline < deadline):
            # A child of an attempt that arrived with a deadline: not past its parent's.
            deadline = origin.deadline
        # Built trusted (every field given, each the runtime's own, already checked): this
        # runs for every attempt sent to a worker.
        envelope = _trusted_envelope(
            {
                "version": ENVELOPE_VERSION,
                "agent": ctx.agent,
                "task": ctx.task,
                "attempt": ctx.attempt,
                "trace_id": origin.trace_id,
                "call_id": origin.call_id,
                "parent_call_id": origin.parent_call_id,
                "batch_id": origin.batch_id,
                "parent_task_id": origin.parent_task_id,
                "depth": origin.depth,
                "deadline": deadline,
                "token_cap": None if cap is None else max(0, cap - ctx.total_tokens),
                "max_spawn_depth": (
                    self._max_depth if origin.max_spawn_depth is None else origin.max_spawn_depth
                ),
                "trace_context": current_trace_context(),
                "wants": _wanted_names(origin.wants),
            }
        )
        result = await self._transport.submit(envelope, _Sink(origin))
        ctx._worker = result.worker
        ctx.report_usage(result.usage)
        # What the attempt waited for the worker's own rate limits counts as the task's.
        ctx._rate_limit_wait += result.rate_limit_wait
        if result.error is not None:
            raise result.error
        return ctx.impl.rebuild_output(result.output)


_trusted_envelope: Callable[[dict[str, Any]], TaskEnvelope] = trusted_constructor(TaskEnvelope)
#: ``wants`` as sent: the names of a few sets of event types, made once each.
_WANTED_NAMES: dict[frozenset[EventType], frozenset[str]] = {}


def _wanted_names(wants: frozenset[EventType]) -> frozenset[str]:
    names = _WANTED_NAMES.get(wants)
    if names is None:
        names = frozenset(str(kind) for kind in wants)
        if len(_WANTED_NAMES) >= 256:
            _WANTED_NAMES.clear()
        _WANTED_NAMES[wants] = names
    return names


class _Sink:
    """Events of a remote attempt, handed to the caller's emitter (failures isolated)."""

    __slots__ = ("_origin",)

    def __init__(self, origin: CallOrigin) -> None:
        self._origin = origin

    async def emit(self, event: Any) -> None:
        await self._origin.emit_isolated(event)
