"""A transport that sends every attempt through JSON to an executor in this process.

What a broker transport does, minus the broker: the envelope and the result are
serialised and parsed back on each side, so only plain data crosses, and the agent is
found by name in the executor's registry. For tests of the transport seam, and for
checking that tasks and their outputs survive the trip before going distributed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._envelope import TaskEnvelope
from .._types import AgentResult, TaskSpec
from .base import Transport

if TYPE_CHECKING:
    from .._envelope import EventSink
    from .._executor import Executor

__all__ = ["LoopbackTransport"]


class LoopbackTransport(Transport):
    """Round-trips each envelope and result through JSON to ``executor``.

    Args:
        executor: Runs the attempts; it must know every agent by name.
    """

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        #: How many attempts went through, for tests and curious users.
        self.submitted = 0

    async def submit(self, envelope: TaskEnvelope, events: EventSink) -> AgentResult[Any]:
        self.submitted += 1
        received = TaskEnvelope.model_validate_json(envelope.model_dump_json())
        # TaskSpec.input is free-form: parsed back as JSON values, as a worker would see it.
        received = received.model_copy(
            update={"task": TaskSpec.model_validate(received.task.model_dump(mode="json"))}
        )
        result = await self.executor.execute(received, events)
        return AgentResult[Any].model_validate_json(result.model_dump_json())

    async def aclose(self) -> None:
        """Close the executor (it belongs to this transport, as a worker to its broker)."""
        await self.executor.aclose()
