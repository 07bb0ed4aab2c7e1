"""The executor: runs one task through the pipeline and turns the outcome into a result.

The same executor runs tasks in-process (``LocalTransport``) and, in distributed mode, on
the worker that receives them.
"""

from __future__ import annotations

from collections.abc import Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio

from ._bridge import AsyncioBridge, HomePortal
from ._context import AgentContext, CallOrigin, _current
from ._pipeline import Stage, compose
from ._types import AgentResult, TaskSpec
from .events.types import EventType
from .middleware.timeout import TimeoutMiddleware

if TYPE_CHECKING:
    from ._agents import AgentImpl

__all__ = ["Executor"]


class Executor:
    """Runs tasks through a pipeline composed once from ``stages``."""

    def __init__(self, stages: Sequence[Stage] = ()) -> None:
        self.stages = tuple(stages)
        self._call = compose(self.stages, _dispatch)
        # Agents that never suspend (no `await` in their code) skip an innermost timeout:
        # no cancel scope can fire inside them (see TimeoutMiddleware).
        inner = self.stages[-1:]
        if inner and isinstance(inner[0], TimeoutMiddleware):
            self._call_unsuspending = compose(self.stages[:-1], _dispatch)
        else:
            self._call_unsuspending = self._call

    async def execute(
        self, impl: AgentImpl, task: TaskSpec, origin: CallOrigin
    ) -> AgentResult[Any]:
        """Run ``task`` on ``impl``; agent failures come back as an error result.

        Cancellation is not a failure: it propagates to the caller untouched.
        """
        ctx = AgentContext(origin, impl, task)
        wants = origin.wants
        # Task events are built and handed over inline (no helper coroutines): this runs for
        # every task, and an emitter that wants everything should cost as little as possible.
        if _STARTED in wants:
            event = ctx._event(_STARTED)
            try:
                await origin.emit(event)
            except Exception:
                origin.runtime._emitter_broke(event)
        start = perf_counter()
        try:
            output = await (self._call if impl.can_suspend else self._call_unsuspending)(ctx)
        except Exception as exc:
            result = AgentResult._build(
                None, exc, ctx.usage, ctx.attempt, perf_counter() - start, task.task_id, impl.name
            )
            if _FAILED in wants:
                await ctx.emit(_FAILED, error=exc, duration=result.duration, usage=result.usage)
            return result
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                duration = perf_counter() - start
                if origin.cancelled is not None:
                    # What it spent is not lost: the caller puts it in the task's result.
                    spent = (ctx.usage, ctx.attempt, duration)
                    origin.cancelled.setdefault(task.task_id, []).append(spent)
                if _CANCELLED in wants:
                    # Report the cancellation, then let it go on: never swallowed.
                    with anyio.CancelScope(shield=True):
                        await ctx.emit(_CANCELLED, duration=duration, usage=ctx.usage)
            raise
        finally:
            ctx._finished = True  # however the task ended, its context spawns no more
        usage = ctx.usage
        duration = perf_counter() - start
        result = AgentResult._build(
            output, None, usage, ctx.attempt, duration, task.task_id, impl.name
        )
        if _SUCCEEDED in wants:
            event = ctx._event(_SUCCEEDED, None, duration, usage)
            try:
                await origin.emit(event)
            except Exception:
                origin.runtime._emitter_broke(event)
        return result


_STARTED = EventType.TASK_STARTED
_SUCCEEDED = EventType.TASK_SUCCEEDED
_FAILED = EventType.TASK_FAILED
_CANCELLED = EventType.TASK_CANCELLED


async def _dispatch(ctx: AgentContext) -> Any:
    """The innermost step: validate the input and call the agent (bridged if need be)."""
    ctx.attempt += 1
    impl = ctx.impl
    value = impl.prepare_input(ctx.task.input)
    token = _current.set(ctx)
    try:
        bridge = ctx.origin.bridge
        if bridge is not None and impl.asyncio_only:
            return await _bridged(bridge, impl, value, ctx)
        return await impl.invoke(value, ctx)
    finally:
        _current.reset(token)


async def _bridged(bridge: AsyncioBridge, impl: AgentImpl, value: Any, ctx: AgentContext) -> Any:
    """Run an asyncio-only agent on the bridge; children it spawns come back home to run."""
    error: BaseException | None = None
    output: Any = None
    async with anyio.create_task_group() as task_group:
        ctx.home = HomePortal(task_group)
        try:
            output = await bridge.run(impl.invoke, value, ctx)
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                raise
            # Re-raised outside the task group, so it is not wrapped in an exception group
            # (an agent's SystemExit or KeyboardInterrupt too, as on asyncio).
            error = exc
        finally:
            ctx.home = None
            # The agent has returned: anything it left running at home is an orphan.
            task_group.cancel_scope.cancel()
    if error is not None:
        raise error
    return output
