"""The executor side of the pipeline: runs one attempt of a task where the agent lives.

Its stages (attempt timeout, user stages, emitter stages) wrap the dispatch of the agent.
In-process, the runtime composes them straight under its caller-side stages, one
pipeline on one ``AgentContext`` (the fast path). Elsewhere, ``Executor.execute`` runs a
``TaskEnvelope`` given only an agent registry, and returns the attempt's result.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Mapping, Sequence
from time import perf_counter
from time import time as _now
from typing import TYPE_CHECKING, Any

import anyio
import sniffio

from ._bridge import AsyncioBridge, HomePortal
from ._cancellation import pending_cancellations, stray_cancellation
from ._context import AgentContext, CallOrigin, _current
from ._pipeline import CallNext, Stage, compose
from ._types import ZERO_USAGE, AgentResult
from .errors import AgentTimeoutError, UnknownAgentError
from .events.types import EventType
from .middleware.timeout import TimeoutMiddleware

if TYPE_CHECKING:
    from ._agents import AgentImpl
    from ._envelope import EventSink, TaskEnvelope
    from ._host import Host

__all__ = ["Executor"]


class Executor:
    """Runs attempts through the executor-side stages, composed once.

    Args:
        stages: Executor-side stages, outermost first.
        agents: The agents it serves by name, for ``execute`` (envelopes name their agent).
        bridge: Returns the asyncio bridge to run asyncio-only agents on under Trio;
            by default the executor starts its own when first needed (``aclose`` ends it).
        host: Runs the children that tasks arriving as envelopes spawn (``ctx.run``, ...);
            without one they cannot spawn.
    """

    def __init__(
        self,
        stages: Sequence[Stage] = (),
        *,
        agents: Mapping[str, AgentImpl] | None = None,
        bridge: Callable[[], AsyncioBridge] | None = None,
        host: Host | None = None,
    ) -> None:
        self.stages = tuple(stages)
        self.host = host
        self.agents: dict[str, AgentImpl] = dict(agents or {})
        self._bridge = bridge if bridge is not None else self._own_bridge
        self._owned: AsyncioBridge | None = None
        #: The stages around the dispatch, as one callable on a context.
        self.pipeline: CallNext = compose(self.stages, _dispatch)
        # Agents that never suspend (no `await` in their code) skip an innermost timeout's
        # scope: none can fire inside them (see TimeoutMiddleware). Its other rule, that an
        # outcome after the deadline is a timeout, is checked in their endpoint instead.
        inner = self.stages[-1:]
        if inner and isinstance(inner[0], TimeoutMiddleware):
            self.pipeline_unsuspending: CallNext = compose(
                self.stages[:-1], _late_checked(inner[0])
            )
        else:
            self.pipeline_unsuspending = self.pipeline

    def _own_bridge(self) -> AsyncioBridge:
        owned = self._owned
        if owned is None:
            owned = self._owned = AsyncioBridge(name="murmur-executor-bridge")
            # Without aclose(), the loop thread goes when the executor is collected.
            weakref.finalize(self, owned.close)
        return owned

    async def aclose(self) -> None:
        """Stop the asyncio bridge this executor started, if any."""
        owned, self._owned = self._owned, None
        if owned is not None:
            await owned.aclose()

    async def execute(self, envelope: TaskEnvelope, sink: EventSink) -> AgentResult[Any]:
        """Run one attempt described by ``envelope``; its failure comes back as a result.

        The result's usage, duration and ``rate_limit_wait`` are this attempt's.
        Cancellation propagates.
        """
        task = envelope.task
        impl = self.agents.get(envelope.agent)
        if impl is None:
            served = ", ".join(sorted(map(repr, self.agents))) or "none"
            unknown = UnknownAgentError(
                f"no agent named {envelope.agent!r} is registered here (serving: {served})"
            )
            return AgentResult._build(
                None, unknown, ZERO_USAGE, 0, 0.0, task.task_id, envelope.agent
            )
        bridge = None
        if impl.asyncio_only and sniffio.current_async_library() != "asyncio":
            bridge = self._bridge()
        origin = CallOrigin.from_envelope(envelope, sink, bridge, self.host)
        ctx = AgentContext(origin, impl, task)
        ctx.attempt = envelope.attempt - 1  # the dispatch counts this attempt
        ctx.token_cap = envelope.token_cap
        origin.cancels = pending_cancellations()
        token = _current.set(ctx)
        start = perf_counter()
        output: Any = None
        error: Exception | None = None
        try:
            if envelope.deadline is None:
                output = await self.pipeline(ctx)
            else:
                left = envelope.deadline - _now()
                with anyio.CancelScope(deadline=anyio.current_time() + left) as scope:
                    output = await self.pipeline(ctx)
                if scope.cancelled_caught:
                    await ctx.emit(
                        EventType.ATTEMPT_TIMED_OUT, data={"deadline": envelope.deadline}
                    )
                    raise AgentTimeoutError(
                        f"agent {impl.name!r} attempt {envelope.attempt} passed its deadline"
                    )
        except Exception as exc:
            error, output = exc, None
        except BaseException as exc:
            stray = stray_cancellation(exc, impl.name, ctx._origin.cancels)
            if stray is None:
                raise
            error, output = stray, None
        finally:
            ctx._finished = True
            _current.reset(token)
        return AgentResult._build(
            output,
            error,
            ctx.usage,
            ctx.attempt,
            perf_counter() - start,
            task.task_id,
            impl.name,
            ctx._rate_limit_wait,  # a worker's own rate limits (RateLimitMiddleware)
        )


async def _dispatch(ctx: AgentContext) -> Any:
    """The innermost step: validate the input and call the agent (bridged if need be)."""
    ctx.attempt += 1
    impl = ctx.impl
    value = impl.prepare_input(ctx.task.input)
    try:
        bridge = ctx.origin.bridge
        if bridge is not None and impl.asyncio_only:
            return await _bridged(bridge, impl, value, ctx)
        return await impl.invoke(value, ctx)
    except asyncio.CancelledError as exc:
        # A stray one becomes this attempt's failure here, so every stage above (retry
        # included) sees an ordinary error; a real one goes on untouched.
        stray = stray_cancellation(exc, impl.name, ctx._origin.cancels)
        if stray is None:
            raise
        raise stray from exc


def _late_checked(timeout: TimeoutMiddleware) -> CallNext:
    """``_dispatch`` for agents that cannot suspend, under an innermost ``timeout``: an
    outcome that arrives after the deadline is a timeout, as inside the stage's scope.

    Inline rather than a stage around ``_dispatch``, whose extra layer would cost more than
    the check (~0.3 µs an attempt). Such agents are never asyncio-only: no bridge. Timed with
    ``perf_counter``: nothing else runs while they do, so only real time can pass.
    """
    limit = timeout.seconds

    async def dispatch(ctx: AgentContext) -> Any:
        ctx.attempt += 1
        impl = ctx.impl
        value = impl.prepare_input(ctx.task.input)
        start = perf_counter()
        try:
            output = await impl.invoke(value, ctx)
        except Exception:
            if perf_counter() - start < limit:
                raise
            raise await timeout.timed_out(ctx)  # noqa: B904 - the late error stays its context
        if perf_counter() - start < limit:
            return output
        raise await timeout.timed_out(ctx)

    return dispatch


async def _invoke_on_bridge(impl: AgentImpl, value: Any, ctx: AgentContext) -> Any:
    """``impl.invoke`` in the bridge task, which forgets the context once done.

    The bridge task runs in a copy of the caller's context, ``current_context()``
    included; the loop may keep that copy a moment after the call (its done callbacks run
    in it), and it must not pin the task's context, and through it the runtime, meanwhile.
    """
    try:
        return await impl.invoke(value, ctx)
    except asyncio.CancelledError as exc:
        # The bridge task is fresh: any cancellation it was sent (by the bridge, because
        # the caller was cancelled) shows in its count; anything else is stray.
        stray = stray_cancellation(exc, impl.name)
        if stray is None:
            raise
        raise stray from exc
    finally:
        _current.set(None)


async def _bridged(bridge: AsyncioBridge, impl: AgentImpl, value: Any, ctx: AgentContext) -> Any:
    """Run an asyncio-only agent on the bridge; children it spawns come back home to run."""
    error: BaseException | None = None
    output: Any = None
    async with anyio.create_task_group() as task_group:
        ctx.home = HomePortal(task_group)
        try:
            output = await bridge.run(_invoke_on_bridge, impl, value, ctx)
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
