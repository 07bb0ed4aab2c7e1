"""DepthLimitMiddleware: refuses spawns deeper than ``max_spawn_depth``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InvalidValueError, SpawnDepthExceededError
from ..events.types import EventType

if TYPE_CHECKING:
    from .._context import AgentContext
    from .._pipeline import CallNext

__all__ = ["DepthLimitMiddleware"]


class DepthLimitMiddleware:
    """Tasks started by the caller are depth 0; each spawn level adds one.

    With ``max_depth=N``, depths 0..N run and a spawn at depth N+1 is refused with
    ``SpawnDepthExceededError`` (after a ``DEPTH_LIMIT_EXCEEDED`` event), before any attempt.
    """

    #: Runs where the call was made (see ``murmur.Stage``).
    side = "caller"

    def __init__(self, max_depth: int) -> None:
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0:
            raise InvalidValueError(f"max_depth must be an int >= 0, got {max_depth!r}")
        self.max_depth = max_depth

    async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
        if ctx.depth > self.max_depth:
            await ctx.emit(
                EventType.DEPTH_LIMIT_EXCEEDED,
                data={"max_spawn_depth": self.max_depth},
            )
            raise SpawnDepthExceededError(
                f"agent {ctx.agent!r} at spawn depth {ctx.depth} exceeds "
                f"max_spawn_depth={self.max_depth}"
            )
        return await call_next(ctx)
