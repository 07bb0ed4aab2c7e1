"""The pipeline: stages are onion middleware around the dispatch of one task.

A stage is any object with ``async def __call__(self, ctx, call_next)``: it may act before
and after ``await call_next(ctx)`` (which returns the agent's output or raises its error),
retry it, replace the task on ``ctx``, transform the output, or short-circuit by returning
without calling it. The runtime composes its stages once, at construction.

Each stage runs on one side of the transport seam, named by its ``side`` attribute:
``"caller"`` stages run where the call was made, once per task, around its attempts
(spawn depth, token budget, retry); ``"executor"`` stages run where the agent runs, once
per attempt (attempt timeout, emitter stages, and user stages unless they say otherwise).
In-process both sides run in one process, on one ``AgentContext``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from types import FunctionType
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from .errors import InvalidValueError

if TYPE_CHECKING:
    from ._context import AgentContext

__all__ = ["CallNext", "Side", "Stage", "compose", "split_by_side"]

#: Where a stage runs: around a task's attempts where the call was made, or per attempt
#: where the agent runs.
Side = Literal["caller", "executor"]
_SIDES = ("caller", "executor")

#: The rest of the pipeline, as seen by a stage.
CallNext = Callable[["AgentContext"], Awaitable[Any]]


@runtime_checkable
class Stage(Protocol):
    """One layer of the pipeline."""

    async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
        """Handle one task, usually by awaiting ``call_next(ctx)``."""
        ...


def split_by_side(stages: Sequence[Any], field: str) -> tuple[list[Stage], list[Stage]]:
    """``stages`` as (caller side, executor side), each in the given order.

    A stage without a ``side`` attribute runs on the executor side.

    Raises:
        ValueError: a ``side`` that is neither ``"caller"`` nor ``"executor"``
            (``field`` names the list in the message).
    """
    caller: list[Stage] = []
    executor: list[Stage] = []
    for index, stage in enumerate(stages):
        side = getattr(stage, "side", "executor")
        if side not in _SIDES:
            raise InvalidValueError(
                f"{field}[{index}].side must be 'caller' or 'executor', got {side!r}"
            )
        (caller if side == "caller" else executor).append(stage)
    return caller, executor


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
