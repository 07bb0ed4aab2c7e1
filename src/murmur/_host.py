"""The runtime as the layers below it see it: one small, named interface.

``AgentContext`` (an agent spawning children) and the group scheduler need a few things
from the runtime that runs them: open a call, run a task or a batch as part of it, report
an event about it. They ask for them through ``Host``, never through the runtime's private
methods, so the code reads top-down and the runtime is free to change behind it (as
anyio's core talks to one abstract backend).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._agents import AgentImpl, AgentLike
    from ._batch import Tally
    from ._context import AgentContext, CallOrigin
    from ._options import RuntimeOptions
    from ._runtime import AgentRuntime
    from ._types import AgentResult, TaskSpec, Usage
    from .events.types import EventType, RuntimeEvent
    from .groups import AgentGroup, GroupResult

__all__ = ["Host"]


class Host(ABC):
    """What a runtime offers the layers below it."""

    @property
    @abstractmethod
    def runtime(self) -> AgentRuntime:
        """The public runtime this host serves (``AgentContext.runtime``)."""

    @property
    @abstractmethod
    def options(self) -> RuntimeOptions:
        """The runtime's options."""

    @abstractmethod
    def check_open(self) -> None:
        """Raise ``RuntimeClosedError`` once the runtime is closed."""

    @abstractmethod
    def open_call(
        self,
        impl: AgentImpl | None,
        parent: AgentContext | None,
        *,
        trace_id: str | None = None,
        parent_call_id: str | None = None,
    ) -> CallOrigin:
        """What the tasks of one new call share (its trace, depth, ids, event types)."""

    @abstractmethod
    def emitter_failed(self, event: RuntimeEvent) -> None:
        """Report that the emitter raised on ``event`` (called from the ``except``)."""

    @abstractmethod
    async def emit_call_event(
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
        """Report an event about a whole call (a batch, a group) or a group node."""

    @abstractmethod
    async def run_task(
        self,
        agent: AgentLike,
        task: TaskSpec,
        *,
        parent: AgentContext | None,
        trace_id: str | None = None,
        tally: Tally | None = None,
        parent_call_id: str | None = None,
        announce: bool = False,
    ) -> AgentResult[Any]:
        """Run one task (``run``); ``tally`` keeps what it spent if it is cut off."""

    @abstractmethod
    async def run_batch(
        self,
        agent: AgentLike,
        tasks: Iterable[TaskSpec],
        *,
        max_concurrency: int | None,
        fail_fast: bool,
        parent: AgentContext | None,
        trace_id: str | None = None,
        tally: Tally | None = None,
        parent_call_id: str | None = None,
        announce: bool = False,
    ) -> list[AgentResult[Any]]:
        """Run a batch (``gather``); ``tally`` keeps finished slots and cut-off spend."""

    @abstractmethod
    async def run_group(
        self, group: AgentGroup, task: TaskSpec, *, parent: AgentContext | None
    ) -> GroupResult:
        """Run an agent group (``run_group``)."""
