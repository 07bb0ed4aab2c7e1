"""In-process execution: tasks run in the caller's task group through the executor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Transport

if TYPE_CHECKING:
    from .._agents import AgentImpl
    from .._context import CallOrigin
    from .._executor import Executor
    from .._types import AgentResult, TaskSpec

__all__ = ["LocalTransport"]


class LocalTransport(Transport):
    """Runs every task in this process, in the calling task."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    async def submit(self, impl: AgentImpl, task: TaskSpec, origin: CallOrigin) -> AgentResult[Any]:
        return await self.executor.execute(impl, task, origin)
