"""The dataflow scheduler: runs an ``AgentGroup``'s nodes as soon as their inputs are ready.

There are no tiers or supersteps. Every node keeps the set of predecessors it still waits
for; when a node finishes, its edges are evaluated (predicates, fan-out, mappers) and each
successor is told "here is your input" or "nothing is coming from me". A successor starts
the moment it has heard from every predecessor and at least one sent it an input; one that
received nothing is pruned, which its own successors then hear in turn.

All node tasks run in one AnyIO task group owned by ``GroupScheduler.run``. Nodes are
dispatched through the runtime's ``Host`` interface (``run_task`` for one task,
``run_batch`` for a fan-out), so they go through its transport and pipeline exactly like
``run``/``gather`` calls.
"""

from __future__ import annotations

import inspect
from collections import deque
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc
import anyio.lowlevel

from .._batch import Tally, single_exception
from .._cancellation import pending_cancellations, running_task
from .._context import AgentContext
from .._host import Host
from .._types import ZERO_USAGE, AgentResult, TaskSpec, Usage, new_task_id
from ..errors import (
    AgentError,
    InvalidStateError,
    InvalidTypeError,
    InvalidValueError,
    TaskCancelledError,
)
from ..events.types import EventType
from .result import GroupResult, NodeStatus
from .topology import AgentGroup, Edge, _Node, fan_out_items

if TYPE_CHECKING:
    from .._runtime import AgentRuntime

__all__ = ["GroupScheduler", "run_group"]

_State = NodeStatus | Literal["running"]


async def run_group(
    host: Host,
    group: AgentGroup,
    task: TaskSpec,
    *,
    parent: AgentContext | None = None,
) -> GroupResult:
    """Run ``group`` on ``task`` with ``host``; the body of ``AgentRuntime.run_group``."""
    if not isinstance(group, AgentGroup):
        raise InvalidTypeError(f"group must be a murmur.AgentGroup, got {type(group).__name__}")
    if not isinstance(task, TaskSpec):
        raise InvalidTypeError(
            f"task must be a murmur.TaskSpec, got {type(task).__name__}; "
            "wrap the input as TaskSpec(input=...)"
        )
    if parent is not None and not isinstance(parent, AgentContext):
        raise InvalidTypeError(f"parent must be a murmur.AgentContext, got {type(parent).__name__}")
    host.check_open()
    return await GroupScheduler(host, group, task, parent=parent).run()


@dataclass(frozen=True, slots=True)
class _Delivery:
    """What one predecessor sends one successor: a task, or one task per fan-out item."""

    specs: list[TaskSpec]
    fanned: bool
    max_concurrency: int | None
    require_all_slots: bool


@dataclass(frozen=True, slots=True)
class _Plan:
    """How a node is dispatched: one ``run_task``, or one ``run_batch`` over the items."""

    specs: list[TaskSpec]
    fanned: bool
    max_concurrency: int | None
    require_all_slots: bool
    task_id: str


class GroupScheduler:
    """One run of one group. Create one per ``run_group`` call; ``run()`` it once.

    ``runtime`` is the ``AgentRuntime`` (or its ``Host``) whose pipeline runs the nodes.

    The ``_on_*`` methods are the run's lifecycle moments; group and node events are
    emitted there (and only there). One run is one trace.
    """

    def __init__(
        self,
        runtime: AgentRuntime | Host,
        group: AgentGroup,
        task: TaskSpec,
        *,
        parent: AgentContext | None,
    ) -> None:
        host = runtime if isinstance(runtime, Host) else runtime.__murmur_host__()
        self.host = host
        #: The public runtime whose pipeline runs the nodes.
        self.runtime = host.runtime
        self.group = group
        self.task = task
        self.parent = parent
        self._nodes = group._nodes
        self._waiting: dict[str, set[str]] = {
            name: set(node.predecessors) for name, node in self._nodes.items()
        }
        self._inputs: dict[str, dict[str, _Delivery]] = {name: {} for name in self._nodes}
        self._state: dict[str, _State] = {}
        self._results: dict[str, AgentResult[Any]] = {}
        self._slots: dict[str, list[AgentResult[Any]]] = {}
        self._started: dict[str, tuple[str, float]] = {}
        # For nodes cancelled mid-run (fail_fast): what their tasks had spent and the slots
        # a fanned-out node had finished; one per node (task ids may repeat across nodes).
        self._tallies: dict[str, Tally] = {}
        self._first_failure: str | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        # One trace for the whole run: every node's tasks and the group events share it.
        self._origin = host.open_call(None, parent)
        # Group and node events are emitted from the caller's task and the node tasks.
        self._origin.caller_task = running_task()
        self._origin.caller_cancels = pending_cancellations()
        self.trace_id = self._origin.trace_id

    # -- lifecycle hooks: the group and node events ----------------------------------------

    async def _emit(
        self,
        type: EventType,
        agent: str,
        data: dict[str, Any],
        *,
        duration: float | None = None,
        result: AgentResult[Any] | None = None,
    ) -> None:
        await self.host.emit_call_event(
            self._origin,
            type,
            agent,
            {"group": self.group.name, **data},
            duration,
            task_id=None if result is None else result.task_id,
            usage=None if result is None else result.usage,
            error=None if result is None else result.error,
        )

    async def _on_group_started(self) -> None:
        """The group is about to start its entry nodes."""
        await self._emit(
            EventType.GROUP_STARTED,
            self.group.name,
            {"task_id": self.task.task_id, "entries": list(self.group.entries)},
        )

    async def _on_node_started(self, node: str, tasks: list[TaskSpec]) -> None:
        """``node`` is being dispatched: one task, or one per item when it is fanned out."""
        await self._emit(EventType.NODE_STARTED, node, {"node": node, "tasks": len(tasks)})

    async def _on_node_completed(self, node: str, result: AgentResult[Any]) -> None:
        """``node`` has its final result (its routing already evaluated), ok or error.

        Also called for a node that failed before dispatch (e.g. conflicting fan-outs).
        Not called for nodes cancelled by ``fail_fast``; those appear in the group result.
        """
        status = "succeeded" if result.is_ok() else "failed"
        await self._emit(
            EventType.NODE_COMPLETED,
            node,
            {"node": node, "status": status},
            duration=result.duration,
            result=result,
        )

    async def _on_node_skipped(self, node: str, status: NodeStatus) -> None:
        """``node`` will not run: ``"pruned"`` or ``"upstream_failed"``."""
        await self._emit(EventType.NODE_COMPLETED, node, {"node": node, "status": status})

    async def _on_group_completed(self, result: GroupResult) -> None:
        """The group finished (successfully or not) with ``result``."""
        await self._emit(
            EventType.GROUP_COMPLETED,
            self.group.name,
            {
                "task_id": self.task.task_id,
                "ok": result.is_ok(),
                "status": {name: str(status) for name, status in result.status.items()},
            },
            duration=result.duration,
        )

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> GroupResult:
        """Run the group to completion and return its result.

        Cancellation of the caller propagates (after every node task has stopped); it is
        never turned into a result.
        """
        if self._task_group is not None:
            raise InvalidStateError("a GroupScheduler runs once; create one per run")
        start = perf_counter()
        await self._on_group_started()
        with single_exception():
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                for entry in self.group.entries:
                    self._start(entry)
        result = self._build_result(perf_counter() - start)
        await self._on_group_completed(result)
        return result

    def _start(self, name: str) -> None:
        tg = self._task_group
        assert tg is not None
        if tg.cancel_scope.cancel_called:
            return  # fail_fast fired: nothing new starts; the node ends up "cancelled"
        self._state[name] = "running"
        tg.start_soon(self._run_node, name, name=f"murmur group {self.group.name!r} {name!r}")

    async def _run_node(self, name: str) -> None:
        # A node queued just before fail_fast fired must not run its agent at all.
        await anyio.lowlevel.checkpoint_if_cancelled()
        node = self._nodes[name]
        start = perf_counter()
        try:
            plan = self._plan(node)
        except Exception as exc:
            result = _error_result(name, exc, new_task_id(), start)
        else:
            self._started[name] = (plan.task_id, start)
            await self._on_node_started(name, plan.specs)
            result = await self._execute(node, plan, start)
        # Recorded before routing: if the group is cancelled meanwhile, its usage still counts.
        self._results[name] = result
        deliveries: dict[str, _Delivery] | None = None
        if result.error is None:
            try:
                deliveries = await self._route(node, result.output)
            except Exception as exc:
                result = _with_error(result, exc)
                self._results[name] = result
        self._state[name] = "succeeded" if deliveries is not None else "failed"
        await self._on_node_completed(name, result)
        skipped = self._release(node, deliveries) if deliveries is not None else self._fail(node)
        for skipped_name, status in skipped:
            await self._on_node_skipped(skipped_name, status)
        if deliveries is None and self.group.fail_fast:
            # The failure policy: the first failure cancels every other running node.
            tg = self._task_group
            assert tg is not None
            tg.cancel_scope.cancel()

    # -- inputs ----------------------------------------------------------------------------

    def _plan(self, node: _Node) -> _Plan:
        """Build the node's task(s) from what its predecessors delivered (the join rule)."""
        metadata = self.task.metadata
        if node.name in self.group.entries:
            spec = TaskSpec(input=self.task.input, metadata=dict(metadata))
            return _Plan([spec], False, None, False, spec.task_id)
        inputs = self._inputs[node.name]
        # Predecessor order, not arrival order: a join's input does not depend on timing.
        delivered = [pred for pred in node.predecessors if pred in inputs]
        fanned = [pred for pred in delivered if inputs[pred].fanned]
        if len(fanned) > 1:
            raise InvalidValueError(
                f"node {node.name!r} receives a fan-out from several predecessors "
                f"({', '.join(map(repr, fanned))}); only one may fan out into a node"
            )
        if len(node.predecessors) == 1:
            only = inputs[delivered[0]]
            task_id = only.specs[0].task_id if not only.fanned and only.specs else new_task_id()
            return _Plan(
                only.specs, only.fanned, only.max_concurrency, only.require_all_slots, task_id
            )
        # A join: its input is {predecessor name: value} over the predecessors that fired.
        values = {pred: inputs[pred].specs[0].input for pred in delivered if pred not in fanned}
        if not fanned:
            spec = TaskSpec(input=values, metadata=dict(metadata))
            return _Plan([spec], False, None, False, spec.task_id)
        source = inputs[fanned[0]]
        specs = [
            TaskSpec(
                input={
                    pred: item.input if pred == fanned[0] else values[pred] for pred in delivered
                },
                metadata=dict(metadata),
            )
            for item in source.specs
        ]
        return _Plan(specs, True, source.max_concurrency, source.require_all_slots, new_task_id())

    async def _execute(self, node: _Node, plan: _Plan, start: float) -> AgentResult[Any]:
        host = self.host
        tally = self._tallies[node.name] = Tally()
        if not plan.fanned:
            try:
                return await host.run_task(
                    node.impl,
                    plan.specs[0],
                    parent=self.parent,
                    trace_id=self.trace_id,
                    tally=tally,
                    parent_call_id=self._origin.call_id,
                )
            except Exception as exc:  # e.g. the runtime was closed under the group
                return _error_result(node.name, exc, plan.task_id, start)
        limit = plan.max_concurrency
        if limit is None:
            limit = self.group.max_concurrency
        require_all = plan.require_all_slots or self.group.require_all_slots
        try:
            slots = await host.run_batch(
                node.impl,
                plan.specs,
                max_concurrency=limit,
                fail_fast=require_all,
                parent=self.parent,
                trace_id=self.trace_id,
                tally=tally,
                parent_call_id=self._origin.call_id,
            )
        except Exception as exc:
            return _error_result(node.name, exc, plan.task_id, start)
        self._slots[node.name] = slots
        return _aggregate(node.name, slots, require_all, plan.task_id, start)

    # -- routing ---------------------------------------------------------------------------

    async def _route(self, node: _Node, output: Any) -> dict[str, _Delivery]:
        """Evaluate the node's edges on its output: what each fired target receives.

        Raises whatever a predicate, the fan-out field or a mapper raises.
        """
        fired: list[tuple[Edge, tuple[str, ...]]] = []
        for route in node.routes:
            if not route.targets:
                continue
            when = route.edge.when
            if when is not None:
                verdict = when(output)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
                if not verdict:
                    continue
            fired.append((route.edge, route.targets))
        items = fan_out_items(output) if any(edge.fan_out for edge, _ in fired) else None
        deliveries: dict[str, _Delivery] = {}
        for edge, targets in fired:
            fan = items is not None and edge.fan_out
            for target in targets:
                if fan:
                    assert items is not None
                    specs = [self._task_for(edge, item, node.name, target) for item in items]
                else:
                    specs = [self._task_for(edge, output, node.name, target)]
                deliveries[target] = _Delivery(
                    specs, fan, edge.max_concurrency, edge.require_all_slots
                )
        return deliveries

    def _task_for(self, edge: Edge, value: Any, source: str, target: str) -> TaskSpec:
        if edge.mapper is None:
            return TaskSpec(input=value, metadata=dict(self.task.metadata))
        spec = edge.mapper(value)
        if not isinstance(spec, TaskSpec):
            raise InvalidTypeError(
                f"the mapper of edge {source!r} -> {target!r} must return a murmur.TaskSpec, "
                f"got {type(spec).__name__}"
            )
        return spec

    # -- propagation -----------------------------------------------------------------------

    def _release(
        self, node: _Node, deliveries: dict[str, _Delivery]
    ) -> list[tuple[str, NodeStatus]]:
        """Tell each successor what ``node`` sent; start the ready ones, prune the starved."""
        for target, delivery in deliveries.items():
            self._inputs[target][node.name] = delivery
        pruned: list[tuple[str, NodeStatus]] = []
        pending = deque((succ, node.name) for succ in node.successors)
        while pending:
            target, pred = pending.popleft()
            waiting = self._waiting[target]
            waiting.discard(pred)
            if waiting or target in self._state:
                continue
            if self._inputs[target]:
                self._start(target)
            else:
                self._state[target] = "pruned"
                pruned.append((target, "pruned"))
                pending.extend((succ, target) for succ in self._nodes[target].successors)
        return pruned

    def _fail(self, node: _Node) -> list[tuple[str, NodeStatus]]:
        """Record ``node``'s failure and skip its descendants (``fail_fast`` is applied after)."""
        if self._first_failure is None:
            self._first_failure = node.name
        # Whatever depends on the failed node can never run. (None of it has started: a
        # node starts only once every predecessor has finished.)
        skipped: list[tuple[str, NodeStatus]] = []
        pending = deque(node.successors)
        while pending:
            target = pending.popleft()
            if target in self._state:
                continue
            self._state[target] = "upstream_failed"
            skipped.append((target, "upstream_failed"))
            pending.extend(self._nodes[target].successors)
        return skipped

    # -- the result ------------------------------------------------------------------------

    def _build_result(self, duration: float) -> GroupResult:
        group = self.group
        first = self._first_failure
        status: dict[str, NodeStatus] = {}
        for name in self._nodes:
            state = self._state.get(name)
            if state is None or state == "running":
                # Only fail_fast leaves nodes unfinished: they were cancelled.
                status[name] = "cancelled"
                if name in self._started:
                    self._results[name] = self._cancelled_result(name, first)
            else:
                status[name] = state
        results = {name: self._results[name] for name in self._nodes if name in self._results}
        slots = {name: self._slots[name] for name in self._nodes if name in self._slots}
        outputs = {
            name: results[name].output for name in group.terminals if status[name] == "succeeded"
        }
        error: Exception | None = None
        if first is not None:
            error = results[first].error
        elif not outputs:
            pruned = [name for name, st in status.items() if st == "pruned"]
            error = AgentError(
                f"group {group.name!r} reached no terminal: every branch was pruned "
                f"(pruned nodes: {', '.join(map(repr, pruned))})"
            )
        usage: Usage = ZERO_USAGE
        for result in results.values():
            usage = usage + result.usage
        return GroupResult.model_construct(
            group=group.name,
            task_id=self.task.task_id,
            outputs=outputs,
            results=results,
            slots=slots,
            status=status,
            error=error,
            usage=usage,
            duration=duration,
        )

    def _cancelled_result(self, name: str, first: str | None) -> AgentResult[Any]:
        task_id, start = self._started[name]
        reason = (
            f"cancelled: node {first!r} of group {self.group.name!r} failed first (fail_fast)"
            if first is not None
            else f"cancelled with group {self.group.name!r}"
        )
        partial = self._results.get(name)  # finished, but cancelled while routing
        if partial is not None:
            usage, attempts = partial.usage, partial.attempts
        else:
            # Cut off mid-run: what its tasks had spent (finished fan-out slots included).
            tally = self._tallies.get(name)
            usage, attempts = (ZERO_USAGE, 0) if tally is None else tally.spent()
        return AgentResult._build(
            output=None,
            error=TaskCancelledError(reason),
            usage=usage,
            attempts=attempts,
            duration=perf_counter() - start,
            task_id=task_id,
            agent=name,
        )


def _error_result(name: str, error: Exception, task_id: str, start: float) -> AgentResult[Any]:
    return AgentResult._build(
        output=None,
        error=error,
        usage=ZERO_USAGE,
        attempts=0,
        duration=perf_counter() - start,
        task_id=task_id,
        agent=name,
    )


def _with_error(result: AgentResult[Any], error: Exception) -> AgentResult[Any]:
    """``result`` turned into a failure (its output dropped), keeping usage and timing."""
    return AgentResult._build(
        output=None,
        error=error,
        usage=result.usage,
        attempts=result.attempts,
        duration=result.duration,
        task_id=result.task_id,
        agent=result.agent,
    )


def _aggregate(
    name: str,
    slots: list[AgentResult[Any]],
    require_all: bool,
    task_id: str,
    start: float,
) -> AgentResult[Any]:
    """One result for a fanned-out node: the successful outputs, in item order."""
    usage: Usage = ZERO_USAGE
    attempts = 0
    failed: list[Exception] = []
    outputs: list[Any] = []
    for slot in slots:
        usage = usage + slot.usage
        attempts += slot.attempts
        if slot.error is None:
            outputs.append(slot.output)
        else:
            failed.append(slot.error)
    error: Exception | None = None
    if failed and require_all:
        # Slots cancelled because another slot failed are not failures of their own.
        causes = [e for e in failed if not isinstance(e, TaskCancelledError)] or failed
        cancelled = len(failed) - len(causes)
        error = ExceptionGroup(
            f"{len(causes)} of {len(slots)} fan-out slots of node {name!r} failed "
            f"(require_all_slots{f'; {cancelled} cancelled' if cancelled else ''})",
            causes,
        )
    return AgentResult._build(
        output=None if error is not None else outputs,
        error=error,
        usage=usage,
        attempts=attempts,
        duration=perf_counter() - start,
        task_id=task_id,
        agent=name,
    )
