"""The transport seam: every task a runtime runs goes through ``Transport.submit``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._agents import AgentImpl
    from .._context import CallOrigin
    from .._types import AgentResult, TaskSpec

__all__ = ["Transport"]


class Transport(ABC):
    """Executes tasks for a runtime and owns whatever connections that takes.

    ``submit`` returns the task's result; agent failures are results, not exceptions.
    Cancelling ``submit`` must cancel the task wherever it runs.
    """

    @abstractmethod
    async def submit(self, impl: AgentImpl, task: TaskSpec, origin: CallOrigin) -> AgentResult[Any]:
        """Run one task and return its result."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release the transport's resources."""
