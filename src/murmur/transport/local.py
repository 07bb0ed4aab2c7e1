"""In-process execution: attempts run in the calling task, on an ``Executor``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Transport

if TYPE_CHECKING:
    from .._envelope import EventSink, TaskEnvelope
    from .._executor import Executor
    from .._types import AgentResult

__all__ = ["LocalTransport"]


class LocalTransport(Transport):
    """Runs every attempt in this process, in the calling task.

    A runtime whose transport is the ``LocalTransport`` of its own executor (the default)
    takes the fast path: no envelope at all, its caller-side and executor-side stages
    composed into one pipeline. Given another executor, envelopes are run on it by agent
    name, as a remote worker would.
    """

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    async def submit(self, envelope: TaskEnvelope, events: EventSink) -> AgentResult[Any]:
        return await self.executor.execute(envelope, events)

    async def aclose(self) -> None:
        """Close the executor (whatever it started, such as its asyncio bridge)."""
        await self.executor.aclose()
