"""Children spawned by a task running on a worker: back through the broker, within limits.

A task that arrived at a worker can ``ctx.run`` / ``ctx.gather`` / ``ctx.run_group``. Its
children are published to the broker like any task (so any worker serving their agent
runs them), one spawn level deeper, on the same trace, and their events travel back to
the original caller through the parent's reply channel. The limits the caller set travel
with them:

* ``max_spawn_depth`` (in the envelope): a child deeper than it is refused here, before
  it is published, exactly as ``DepthLimitMiddleware`` refuses it in-process;
* the token grant: a child may spend at most what its parent has left of the cap the
  caller's ``TokenBudget`` granted it; what the child spent is added to its parent's
  usage, so the parent's result tells the caller's budget the whole spend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import BudgetExceededError, SpawnDepthExceededError
from ..events.types import EventType

if TYPE_CHECKING:
    from .._context import AgentContext
    from .._pipeline import CallNext

__all__ = ["InheritedLimits"]


class InheritedLimits:
    """The caller-side stage of a worker's spawns: depth and token grant from the parent."""

    side = "caller"

    async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
        limit = ctx.origin.max_spawn_depth
        if limit is not None and ctx.depth > limit:
            await ctx.emit(EventType.DEPTH_LIMIT_EXCEEDED, data={"max_spawn_depth": limit})
            raise SpawnDepthExceededError(
                f"agent {ctx.agent!r} at spawn depth {ctx.depth} exceeds max_spawn_depth={limit}"
            )
        parent = ctx.parent
        if parent is None or parent.token_cap is None:
            return await call_next(ctx)
        left = parent.token_cap - parent.total_tokens
        if left <= 0:
            await ctx.emit(EventType.BUDGET_EXCEEDED, data={"granted": parent.token_cap})
            raise BudgetExceededError(
                f"agent {ctx.agent!r}: its parent {parent.agent!r} has spent the "
                f"{parent.token_cap} tokens its caller's budget granted it"
            )
        ctx.token_cap = left
        try:
            return await call_next(ctx)
        finally:
            # The child's spend is its parent's: the caller's budget settles it from there.
            parent.report_usage(ctx.usage)
