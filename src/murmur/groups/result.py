"""GroupResult: what one run of an ``AgentGroup`` produced."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from .._types import ZERO_USAGE, AgentResult, ErrorInfo, Usage
from ..errors import InvalidValueError

__all__ = ["GroupResult", "NodeStatus"]

#: How a node ended:
#:
#: * ``"succeeded"`` - it ran and its output was routed on;
#: * ``"failed"`` - it ran (or its inputs, predicates or mappers could not be evaluated) and
#:   its result is an error;
#: * ``"cancelled"`` - another node failed and ``fail_fast`` cancelled this one before it
#:   finished or could start; a node that had started has a ``TaskCancelledError`` result;
#: * ``"pruned"`` - it never ran: every predecessor edge into it was pruned by a predicate
#:   (or led from a pruned node);
#: * ``"upstream_failed"`` - it never ran: a node it depends on failed.
NodeStatus = Literal["succeeded", "failed", "cancelled", "pruned", "upstream_failed"]


class GroupResult(BaseModel):
    """The outcome of ``AgentRuntime.run_group``: outputs, per-node results, usage, timing.

    Attributes:
        group: The group's name.
        task_id: The ``task_id`` of the group's ``TaskSpec``.
        outputs: The output of every terminal node that was reached and succeeded, by node
            name, in topology order.
        results: Each node's ``AgentResult``, by node name in topology order, for every node
            that started. A fanned-out node's result aggregates its slots: its output is the
            list of the successful slots' outputs in item order (what its successors
            received), its usage the slots' total.
        slots: For each fanned-out node, one ``AgentResult`` per item, in item order.
        status: How each node ended (``NodeStatus``), for every node of the group.
        error: Why the group failed: the error of the first node that failed, or an
            ``AgentError`` when no terminal was reached; ``None`` on success.
        usage: Total usage of every node (fan-out slots included).
        duration: Wall-clock seconds the group ran.

    Failed fan-out slots that the group tolerated (no ``require_all_slots``) do not make
    the group fail: find them in ``slots`` or ``failed_slots``.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    group: str
    task_id: str
    outputs: dict[str, Any] = Field(default_factory=dict)
    results: dict[str, AgentResult[Any]] = Field(default_factory=dict)
    slots: dict[str, list[AgentResult[Any]]] = Field(default_factory=dict)
    status: dict[str, NodeStatus] = Field(default_factory=dict)
    error: Exception | None = None
    usage: Usage = ZERO_USAGE
    duration: float = Field(default=0.0, ge=0.0)

    def is_ok(self) -> bool:
        """True when the group succeeded: no node failed and a terminal was reached."""
        return self.error is None

    @property
    def output(self) -> Any:
        """The output of the one terminal reached; ``None`` when none was.

        Raises:
            ValueError: several terminals were reached; read ``outputs`` instead.
        """
        if not self.outputs:
            return None
        if len(self.outputs) > 1:
            raise InvalidValueError(
                f"group {self.group!r} reached several terminals "
                f"({', '.join(map(repr, self.outputs))}); read GroupResult.outputs"
            )
        return next(iter(self.outputs.values()))

    def unwrap(self) -> Any:
        """Return ``output``, or raise the group's error."""
        if self.error is not None:
            raise self.error
        return self.output

    @property
    def errors(self) -> dict[str, Exception]:
        """The error of every failed node, by node name in topology order."""
        return {
            name: result.error
            for name, result in self.results.items()
            if self.status.get(name) == "failed" and result.error is not None
        }

    @property
    def failed_slots(self) -> dict[str, list[int]]:
        """For each fanned-out node with failed slots, the failed items' indices."""
        failed = {
            name: [i for i, slot in enumerate(slots) if slot.error is not None]
            for name, slots in self.slots.items()
        }
        return {name: indices for name, indices in failed.items() if indices}

    @field_serializer("error")
    def _serialise_error(self, error: Exception | None) -> dict[str, Any] | None:
        return None if error is None else ErrorInfo.from_exception(error).model_dump()
