"""The pipeline: stages are onion middleware around the dispatch of one task.

A stage is any object with ``async def __call__(self, ctx, call_next)``: it may act before
and after ``await call_next(ctx)`` (which returns the agent's output or raises its error),
retry it, replace the task on ``ctx``, transform the output, or short-circuit by returning
without calling it. The runtime composes its stages once, at construction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from types import FunctionType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._context import AgentContext

__all__ = ["CallNext", "Stage", "compose"]

#: The rest of the pipeline, as seen by a stage.
CallNext = Callable[["AgentContext"], Awaitable[Any]]


@runtime_checkable
class Stage(Protocol):
    """One layer of the pipeline."""

    async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
        """Handle one task, usually by awaiting ``call_next(ctx)``."""
        ...


def compose(stages: Sequence[Stage], endpoint: CallNext) -> CallNext:
    """Wrap ``endpoint`` in ``stages``, the first stage outermost."""
    call = endpoint
    for stage in reversed(stages):
        call = _layer(stage, call)
    return call


def _layer(stage: Stage, call_next: CallNext) -> CallNext:
    # A plain function returning the stage's coroutine: no extra coroutine frame per layer.
    # The bound __call__ is looked up once here rather than on every call.
    call = stage if isinstance(stage, FunctionType) else stage.__call__

    def layer(ctx: AgentContext) -> Awaitable[Any]:
        return call(ctx, call_next)

    return layer
