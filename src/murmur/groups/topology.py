"""AgentGroup topology: nodes, ``Edge``s, ``FanOut`` fields, and validation at construction.

A topology maps each node (any agent the runtime accepts, keyed by the object itself) to its
outgoing ``Edge`` or a tuple of Edges. Everything that can be checked without running the
graph is checked when the ``AgentGroup`` is built, and reported as a ``TopologyError`` that
names the offending nodes.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import BaseModel

from .._agents import AgentImpl, AgentLike, resolve_agent
from .._types import TaskSpec
from ..errors import InvalidTypeError, InvalidValueError, TopologyError, UnknownNodeError

__all__ = ["AgentGroup", "Edge", "FanOut", "Mapper", "Predicate"]

_T = TypeVar("_T")

#: ``when=``: called with the node's output; truthy (or awaiting to truthy) fires the edge.
Predicate = Callable[[Any], "bool | Awaitable[bool]"]
#: ``mapper=``: builds a target's task from the node's output (or from one fan-out item).
Mapper = Callable[[Any], TaskSpec]


class _FanOut:
    """Marks a list field of a node's output model as fan-out (see ``FanOut``)."""

    __slots__ = ()

    def __class_getitem__(cls, item: Any) -> Any:
        return Annotated[item, cls]


_FanOut.__name__ = _FanOut.__qualname__ = "FanOut"

if TYPE_CHECKING:
    #: ``FanOut[list[X]]`` is ``list[X]`` to type checkers, marked for the scheduler.
    FanOut = Annotated[_T, _FanOut]
else:
    FanOut = _FanOut
    """Marks a field of a node's output model as fan-out.

    Spell it ``questions: FanOut[list[SubQuestion]]`` or
    ``questions: Annotated[list[SubQuestion], FanOut]``. When a node's output is a pydantic
    model with such a field, each of the node's edges sends one task per item to each of
    its targets (unless the edge says ``fan_out=False``).
    """


def fan_out_items(output: Any) -> list[Any] | None:
    """The items of ``output``'s ``FanOut`` field, or ``None`` when it has none.

    Raises:
        TypeError: the model marks several fields, or the marked field is not a sequence.
    """
    if not isinstance(output, BaseModel):
        return None
    marked = [
        name
        for name, field in type(output).model_fields.items()
        if any(meta is _FanOut or isinstance(meta, _FanOut) for meta in field.metadata)
    ]
    if not marked:
        return None
    if len(marked) > 1:
        raise InvalidTypeError(
            f"{type(output).__name__} marks several fields as FanOut "
            f"({', '.join(map(repr, marked))}); a node's output may fan out over one field"
        )
    value = getattr(output, marked[0])
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidTypeError(
            f"FanOut field {type(output).__name__}.{marked[0]} must hold a list, "
            f"got {type(value).__name__}"
        )
    return list(value)


class Edge:
    """A node's outgoing edge: where its output goes, and under which condition.

    Args:
        to: The target nodes, a tuple of agents that are keys of the same topology
            (``Edge(to=(reviewer,))``).
        when: Optional predicate on the node's output, sync or async; a falsy verdict
            prunes this edge. If it raises, the node's result becomes that error.
        mapper: Optional ``output -> TaskSpec`` that builds each target's task (called once
            per target, and once per item when fanning out). Without it, the target's task
            is ``TaskSpec(input=output)`` carrying the group task's metadata.
        max_concurrency: Cap on a fan-out's tasks in flight along this edge (>= 1);
            default: the group's ``max_concurrency``, else the runtime's.
        require_all_slots: If true, a fan-out along this edge fails its target node when
            any slot fails (and cancels the remaining slots).
        fan_out: If false, a ``FanOut`` output is sent whole along this edge instead of
            item by item.

    ``Edge.terminal()`` marks a node whose output is a result of the group.
    """

    __slots__ = (
        "_terminal",
        "fan_out",
        "mapper",
        "max_concurrency",
        "require_all_slots",
        "to",
        "when",
    )

    to: tuple[AgentLike, ...]
    when: Predicate | None
    mapper: Mapper | None
    max_concurrency: int | None
    require_all_slots: bool
    fan_out: bool
    _terminal: bool

    def __init__(
        self,
        to: tuple[AgentLike, ...] | list[AgentLike] = (),
        *,
        when: Predicate | None = None,
        mapper: Mapper | None = None,
        max_concurrency: int | None = None,
        require_all_slots: bool = False,
        fan_out: bool = True,
    ) -> None:
        if not isinstance(to, (tuple, list)):
            raise InvalidTypeError(
                f"Edge(to=...) takes a tuple of agents, e.g. Edge(to=(reviewer,)); "
                f"got {type(to).__name__}: {to!r}"
            )
        if when is not None and not callable(when):
            raise InvalidTypeError(f"Edge(when=...) must be a callable predicate, got {when!r}")
        if mapper is not None and not callable(mapper):
            raise InvalidTypeError(
                f"Edge(mapper=...) must be a callable output -> TaskSpec, got {mapper!r}"
            )
        _check_limit(max_concurrency, "Edge(max_concurrency=...)")
        _check_flag(require_all_slots, "Edge(require_all_slots=...)")
        _check_flag(fan_out, "Edge(fan_out=...)")
        _set = object.__setattr__
        _set(self, "to", tuple(to))
        _set(self, "when", when)
        _set(self, "mapper", mapper)
        _set(self, "max_concurrency", max_concurrency)
        _set(self, "require_all_slots", require_all_slots)
        _set(self, "fan_out", fan_out)
        _set(self, "_terminal", False)

    @classmethod
    def terminal(cls) -> Edge:
        """The edge of a terminal node: its output is one of the group's outputs."""
        edge = cls()
        object.__setattr__(edge, "_terminal", True)
        return edge

    @property
    def is_terminal(self) -> bool:
        """True for ``Edge.terminal()``."""
        return self._terminal

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Edge is immutable; cannot set {name!r}")

    def __repr__(self) -> str:
        if self._terminal:
            return "Edge.terminal()"
        targets = ", ".join(_label(t) for t in self.to)
        parts = [f"to=({targets}{',' if len(self.to) == 1 else ''})"]
        if self.when is not None:
            parts.append(f"when={_callable_label(self.when)}")
        if self.mapper is not None:
            parts.append(f"mapper={_callable_label(self.mapper)}")
        if self.max_concurrency is not None:
            parts.append(f"max_concurrency={self.max_concurrency}")
        if self.require_all_slots:
            parts.append("require_all_slots=True")
        if not self.fan_out:
            parts.append("fan_out=False")
        return f"Edge({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class _Route:
    """One Edge of a node, with its targets resolved to node names."""

    edge: Edge
    targets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Node:
    """One validated node: its agent, routes and neighbours (in topology order)."""

    name: str
    agent: AgentLike
    impl: AgentImpl
    routes: tuple[_Route, ...]
    terminal: bool
    predecessors: tuple[str, ...]
    successors: tuple[str, ...]


class AgentGroup:
    """A typed graph of agents, run by ``AgentRuntime.run_group``.

    Args:
        name: The group's name (used in results and events).
        topology: ``{agent: Edge(...) | (Edge(...), ...)}``. Keys are the nodes (any agent
            the runtime accepts; wrap a raw ``pydantic_ai.Agent`` with ``from_pydantic_ai``
            since it is not hashable); edge targets must be the same objects as the keys.
        entry: The node(s) that receive the group task's input: an agent, a node name, or a
            tuple of them. Default: the one node without predecessors.
        max_concurrency: Default cap on each fan-out's tasks in flight (>= 1); default: the
            runtime's ``max_concurrency``.
        require_all_slots: If true, every fan-out of the group must succeed in all its slots.
        fail_fast: If true (the default), the first node failure cancels every other running
            node of the group; if false, only the failed node's descendants are skipped.

    Raises:
        TopologyError: the topology is invalid; the message names the offending nodes.
        TypeError / ValueError: an argument of the wrong type or out of range.
    """

    __slots__ = (
        "_entries",
        "_fail_fast",
        "_max_concurrency",
        "_name",
        "_nodes",
        "_require_all_slots",
        "_terminals",
        "_topology",
    )

    def __init__(
        self,
        name: str,
        topology: Mapping[AgentLike, Edge | tuple[Edge, ...] | list[Edge]],
        *,
        entry: AgentLike | str | tuple[AgentLike | str, ...] | None = None,
        max_concurrency: int | None = None,
        require_all_slots: bool = False,
        fail_fast: bool = True,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise InvalidValueError(f"AgentGroup name must be a non-empty string, got {name!r}")
        if not isinstance(topology, Mapping):
            raise InvalidTypeError(
                "AgentGroup topology must be a mapping {agent: Edge(...)}, "
                f"got {type(topology).__name__}"
            )
        _check_limit(max_concurrency, "AgentGroup(max_concurrency=...)")
        _check_flag(require_all_slots, "AgentGroup(require_all_slots=...)")
        _check_flag(fail_fast, "AgentGroup(fail_fast=...)")
        self._name = name
        self._topology = dict(topology)
        self._max_concurrency = max_concurrency
        self._require_all_slots = require_all_slots
        self._fail_fast = fail_fast
        self._nodes = _build_nodes(name, self._topology)
        self._entries = _resolve_entries(name, self._nodes, entry)
        _check_reachable(name, self._nodes, self._entries)
        self._terminals = tuple(n for n, node in self._nodes.items() if node.terminal)
        _check_terminals(name, self._nodes, self._terminals)

    @property
    def name(self) -> str:
        """The group's name."""
        return self._name

    @property
    def topology(self) -> Mapping[AgentLike, Edge | tuple[Edge, ...] | list[Edge]]:
        """The topology as given (a copy)."""
        return dict(self._topology)

    @property
    def nodes(self) -> tuple[str, ...]:
        """Node names, in topology order."""
        return tuple(self._nodes)

    @property
    def entries(self) -> tuple[str, ...]:
        """The nodes that receive the group task's input."""
        return self._entries

    @property
    def terminals(self) -> tuple[str, ...]:
        """The nodes whose outputs are the group's outputs."""
        return self._terminals

    @property
    def max_concurrency(self) -> int | None:
        """Default fan-out cap of the group's edges, if set."""
        return self._max_concurrency

    @property
    def require_all_slots(self) -> bool:
        """Whether every fan-out of the group must succeed in all its slots."""
        return self._require_all_slots

    @property
    def fail_fast(self) -> bool:
        """Whether the first node failure cancels the other running nodes."""
        return self._fail_fast

    def agent(self, node: str) -> AgentLike:
        """The agent of ``node``, as given in the topology."""
        return self._node(node).agent

    def predecessors(self, node: str) -> tuple[str, ...]:
        """The nodes with an edge to ``node``, in topology order."""
        return self._node(node).predecessors

    def successors(self, node: str) -> tuple[str, ...]:
        """The nodes ``node`` has an edge to, in edge order."""
        return self._node(node).successors

    def _node(self, node: str) -> _Node:
        try:
            return self._nodes[node]
        except KeyError:
            raise UnknownNodeError(f"group {self._name!r} has no node {node!r}") from None

    def __repr__(self) -> str:
        return f"<AgentGroup {self._name!r} nodes={list(self._nodes)}>"


# -- validation ------------------------------------------------------------------------------


def _build_nodes(group: str, topology: dict[AgentLike, Any]) -> dict[str, _Node]:
    """Resolve keys to named nodes and values to routes; check names, values and targets."""
    if not topology:
        raise TopologyError(f"group {group!r}: the topology has no nodes")
    names: dict[str, AgentLike] = {}
    impls: dict[str, AgentImpl] = {}
    by_identity: dict[int, str] = {}
    for key in topology:
        try:
            impl = resolve_agent(key)
        except TypeError as exc:
            raise TopologyError(
                f"group {group!r}: topology key {key!r} is not an agent ({exc})"
            ) from exc
        if impl.name in names:
            raise TopologyError(
                f"group {group!r}: two nodes are named {impl.name!r} "
                f"({names[impl.name]!r} and {key!r}); node names must be unique"
            )
        names[impl.name] = key
        impls[impl.name] = impl
        by_identity[id(key)] = impl.name

    edges: dict[str, tuple[Edge, ...]] = {}
    for name, key in names.items():
        edges[name] = _edges_of(group, name, topology[key])

    missing: list[str] = []
    routes: dict[str, tuple[_Route, ...]] = {}
    for name, node_edges in edges.items():
        node_routes = []
        seen: set[str] = set()
        for edge in node_edges:
            targets = []
            for target in edge.to:
                target_name = by_identity.get(id(target))
                if target_name is None:
                    missing.append(f"{name!r} -> {_label(target)}")
                    continue
                if target_name in seen:
                    raise TopologyError(
                        f"group {group!r}: node {name!r} has several edges to {target_name!r}; "
                        "give each target one edge (combine the conditions in one predicate)"
                    )
                seen.add(target_name)
                targets.append(target_name)
            node_routes.append(_Route(edge, tuple(targets)))
        routes[name] = tuple(node_routes)
    if missing:
        raise TopologyError(
            f"group {group!r}: edge targets missing from the topology: {', '.join(missing)} "
            "(targets must be the very objects used as topology keys)"
        )

    successors = {
        name: tuple(t for route in node_routes for t in route.targets)
        for name, node_routes in routes.items()
    }
    predecessors: dict[str, list[str]] = {name: [] for name in names}
    for name, succ in successors.items():
        for target in succ:
            predecessors[target].append(name)
    _check_acyclic(group, successors, predecessors)
    return {
        name: _Node(
            name=name,
            agent=names[name],
            impl=impls[name],
            routes=routes[name],
            terminal=any(route.edge.is_terminal for route in routes[name]),
            predecessors=tuple(predecessors[name]),
            successors=successors[name],
        )
        for name in names
    }


def _edges_of(group: str, name: str, value: Any) -> tuple[Edge, ...]:
    if isinstance(value, Edge):
        return (value,)
    if isinstance(value, (tuple, list)):
        if not value:
            raise TopologyError(
                f"group {group!r}: node {name!r} has no edges; give it Edge(to=(...)) "
                "or Edge.terminal()"
            )
        for index, edge in enumerate(value):
            if not isinstance(edge, Edge):
                raise TopologyError(
                    f"group {group!r}: node {name!r}: edge [{index}] is not an Edge, got "
                    f"{type(edge).__name__}: {edge!r}"
                )
        return tuple(value)
    raise TopologyError(
        f"group {group!r}: the value of node {name!r} must be an Edge or a tuple of Edges, "
        f"got {type(value).__name__}: {value!r}"
    )


def _check_acyclic(
    group: str, successors: dict[str, tuple[str, ...]], predecessors: dict[str, list[str]]
) -> None:
    """Raise with the first cycle found (depth-first, in topology order) as ``a -> b -> a``."""
    done: set[str] = set()
    for root in successors:
        if root in done:
            continue
        path: list[str] = [root]
        on_path: set[str] = {root}
        stack: list[Iterator[str]] = [iter(successors[root])]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                continue
            if child in on_path:
                cycle = [*path[path.index(child) :], child]
                no_entry = not any(not preds for preds in predecessors.values())
                prefix = "no entry node (every node has a predecessor): " if no_entry else ""
                raise TopologyError(
                    f"group {group!r}: {prefix}the topology has a cycle: {' -> '.join(cycle)}"
                )
            if child in done:
                continue
            path.append(child)
            on_path.add(child)
            stack.append(iter(successors[child]))


def _resolve_entries(group: str, nodes: dict[str, _Node], entry: Any) -> tuple[str, ...]:
    sources = tuple(name for name, node in nodes.items() if not node.predecessors)
    if entry is None:
        if len(sources) > 1:
            raise TopologyError(
                f"group {group!r}: several entry nodes (nodes without predecessors): "
                f"{', '.join(map(repr, sources))}; pass entry= to name the node(s) that "
                "receive the group's input"
            )
        # No source at all means a cycle, which _check_acyclic already reported.
        return sources
    wanted = entry if isinstance(entry, tuple) else (entry,)
    if not wanted:
        raise TopologyError(f"group {group!r}: entry= names no node")
    by_identity = {id(node.agent): name for name, node in nodes.items()}
    entries: list[str] = []
    for item in wanted:
        name = item if isinstance(item, str) and item in nodes else by_identity.get(id(item))
        if name is None:
            raise TopologyError(
                f"group {group!r}: entry {_label(item)} is not a node of the topology"
            )
        preds = nodes[name].predecessors
        if preds:
            raise TopologyError(
                f"group {group!r}: entry node {name!r} has predecessors "
                f"({', '.join(map(repr, preds))}); an entry receives the group's input only"
            )
        if name not in entries:
            entries.append(name)
    return tuple(entries)


def _closure(start: Iterable[str], neighbours: Callable[[str], Iterable[str]]) -> set[str]:
    """Every node reachable from ``start`` by following ``neighbours``, ``start`` included."""
    seen = set(start)
    frontier = list(seen)
    while frontier:
        for nxt in neighbours(frontier.pop()):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return seen


def _check_reachable(group: str, nodes: dict[str, _Node], entries: tuple[str, ...]) -> None:
    seen = _closure(entries, lambda name: nodes[name].successors)
    unreachable = [name for name in nodes if name not in seen]
    if unreachable:
        raise TopologyError(
            f"group {group!r}: nodes unreachable from the entry "
            f"({', '.join(map(repr, entries))}): {', '.join(map(repr, unreachable))}"
        )


def _check_terminals(group: str, nodes: dict[str, _Node], terminals: tuple[str, ...]) -> None:
    seen = _closure(terminals, lambda name: nodes[name].predecessors)
    stranded = [name for name in nodes if name not in seen]
    if stranded:
        raise TopologyError(
            f"group {group!r}: nodes with no path to a terminal: "
            f"{', '.join(map(repr, stranded))}; end each branch with a node whose edge is "
            "Edge.terminal()"
        )


# -- helpers ---------------------------------------------------------------------------------


def _check_limit(value: Any, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidValueError(f"{what} must be None or an int >= 1, got {value!r}")


def _check_flag(value: Any, what: str) -> None:
    if not isinstance(value, bool):
        raise InvalidTypeError(f"{what} must be a bool, got {value!r}")


def _label(agent: Any) -> str:
    """A node's name for messages, or the object's repr when it is not an agent."""
    try:
        return repr(resolve_agent(agent).name)
    except TypeError:
        return repr(agent)


def _callable_label(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        return repr(fn)
    return f"{name}{' (async)' if inspect.iscoroutinefunction(fn) else ''}"
