"""AgentGroup validation at construction: every error is a TopologyError naming the nodes."""

from __future__ import annotations

import re
from typing import Any

import pytest

from murmur import (
    AgentGroup,
    AgentRuntime,
    Edge,
    FunctionAgent,
    MurmurError,
    RuntimeClosedError,
    TaskSpec,
    TopologyError,
)

pytestmark = pytest.mark.anyio


async def a(value: Any) -> Any:
    return value


async def b(value: Any) -> Any:
    return value


async def c(value: Any) -> Any:
    return value


async def d(value: Any) -> Any:
    return value


async def e(value: Any) -> Any:
    return value


async def test_topology_error_is_in_the_error_tree() -> None:
    assert issubclass(TopologyError, MurmurError)
    assert issubclass(TopologyError, ValueError)


async def test_a_valid_group_exposes_its_structure() -> None:
    group = AgentGroup(
        name="diamond",
        topology={
            a: Edge(to=(b, c)),
            b: Edge(to=(d,)),
            c: Edge(to=(d,)),
            d: Edge.terminal(),
        },
    )
    assert group.name == "diamond"
    assert group.nodes == ("a", "b", "c", "d")
    assert group.entries == ("a",)
    assert group.terminals == ("d",)
    assert group.predecessors("d") == ("b", "c")
    assert group.successors("a") == ("b", "c")
    assert group.agent("b") is b
    assert group.fail_fast is True
    assert group.max_concurrency is None
    assert group.require_all_slots is False
    with pytest.raises(KeyError, match="no node 'zz'"):
        group.predecessors("zz")


async def test_missing_edge_targets_are_named() -> None:
    with pytest.raises(TopologyError, match=r"missing from the topology: 'a' -> 'c'") as info:
        AgentGroup(name="g", topology={a: Edge(to=(b, c)), b: Edge.terminal()})
    assert "group 'g'" in str(info.value)


async def test_every_missing_target_is_listed() -> None:
    with pytest.raises(TopologyError) as info:
        AgentGroup(
            name="g",
            topology={a: Edge(to=(b, c)), b: Edge(to=(d,))},
        )
    message = str(info.value)
    assert "'a' -> 'c'" in message
    assert "'b' -> 'd'" in message


async def test_a_non_agent_target_is_missing() -> None:
    with pytest.raises(TopologyError, match=r"'a' -> 'not an agent'"):
        AgentGroup(name="g", topology={a: Edge(to=("not an agent",))})


async def test_a_target_must_be_the_key_object_itself() -> None:
    # An equal-named but different agent object is not the node.
    twin = FunctionAgent(b)
    with pytest.raises(TopologyError, match=r"'a' -> 'b'.*very objects"):
        AgentGroup(name="g", topology={a: Edge(to=(twin,)), b: Edge.terminal()})


async def test_a_two_node_cycle_shows_its_path() -> None:
    with pytest.raises(TopologyError, match=re.escape("cycle: a -> b -> a")) as info:
        AgentGroup(name="g", topology={a: Edge(to=(b,)), b: Edge(to=(a,))})
    # Every node has a predecessor, so there is no entry either: the message says both.
    assert "no entry node" in str(info.value)


async def test_a_cycle_below_the_entry_shows_its_path() -> None:
    with pytest.raises(TopologyError, match=re.escape("cycle: b -> c -> d -> b")) as info:
        AgentGroup(
            name="g",
            topology={
                a: Edge(to=(b,)),
                b: Edge(to=(c,)),
                c: (Edge(to=(d,)), Edge(to=(e,))),
                d: Edge(to=(b,)),
                e: Edge.terminal(),
            },
        )
    assert "no entry node" not in str(info.value)


async def test_a_self_loop_is_a_cycle() -> None:
    with pytest.raises(TopologyError, match=re.escape("cycle: b -> b")):
        AgentGroup(
            name="g",
            topology={a: Edge(to=(b,)), b: (Edge(to=(b,)), Edge(to=(c,))), c: Edge.terminal()},
        )


async def test_a_cycle_is_rejected_even_with_an_explicit_entry() -> None:
    with pytest.raises(TopologyError, match=re.escape("cycle: a -> b -> a")):
        AgentGroup(name="g", topology={a: Edge(to=(b,)), b: Edge(to=(a,))}, entry=a)


async def test_several_entries_are_named() -> None:
    with pytest.raises(TopologyError, match=r"several entry nodes.*'a', 'b'.*entry="):
        AgentGroup(
            name="g",
            topology={a: Edge(to=(c,)), b: Edge(to=(c,)), c: Edge.terminal()},
        )


async def test_explicit_entries_resolve_several_sources() -> None:
    topology = {a: Edge(to=(c,)), b: Edge(to=(c,)), c: Edge.terminal()}
    by_agent = AgentGroup(name="g", topology=topology, entry=(a, b))
    by_name = AgentGroup(name="g", topology=topology, entry=("a", "b"))
    assert by_agent.entries == by_name.entries == ("a", "b")


async def test_every_explicit_entry_receives_the_group_input(runtime: AgentRuntime) -> None:
    async def left(value: str) -> str:
        return f"L{value}"

    async def right(value: str) -> str:
        return f"R{value}"

    async def join(value: dict[str, str]) -> dict[str, str]:
        return value

    group = AgentGroup(
        name="g",
        topology={left: Edge(to=(join,)), right: Edge(to=(join,)), join: Edge.terminal()},
        entry=(left, right),
    )
    result = await runtime.run_group(group, TaskSpec(input="x"))
    assert result.output == {"left": "Lx", "right": "Rx"}


async def test_a_single_entry_leaves_other_sources_unreachable() -> None:
    with pytest.raises(TopologyError, match=r"unreachable from the entry \('a'\): 'b', 'd'"):
        AgentGroup(
            name="g",
            topology={
                a: Edge(to=(c,)),
                b: Edge(to=(d,)),
                c: Edge.terminal(),
                d: Edge.terminal(),
            },
            entry="a",
        )


async def test_an_entry_must_be_a_node() -> None:
    with pytest.raises(TopologyError, match=r"entry 'e' is not a node"):
        AgentGroup(name="g", topology={a: Edge.terminal()}, entry=e)
    with pytest.raises(TopologyError, match=r"entry 'nope' is not a node"):
        AgentGroup(name="g", topology={a: Edge.terminal()}, entry="nope")


async def test_an_entry_cannot_have_predecessors() -> None:
    with pytest.raises(TopologyError, match=r"entry node 'b' has predecessors \('a'\)"):
        AgentGroup(name="g", topology={a: Edge(to=(b,)), b: Edge.terminal()}, entry=(a, b))


async def test_nodes_without_a_path_to_a_terminal_are_named() -> None:
    with pytest.raises(TopologyError, match=r"no path to a terminal: 'c', 'd'") as info:
        AgentGroup(
            name="g",
            topology={
                a: (Edge(to=(b,)), Edge(to=(c,))),
                b: Edge.terminal(),
                c: Edge(to=(d,)),
                d: Edge(to=()),  # leads nowhere: not a terminal
            },
        )
    assert "'a'" not in str(info.value).split("terminal:")[1]


async def test_a_group_without_any_terminal_is_rejected() -> None:
    with pytest.raises(TopologyError, match=r"no path to a terminal: 'a', 'b'"):
        AgentGroup(name="g", topology={a: Edge(to=(b,)), b: Edge()})


async def test_two_nodes_with_the_same_name_are_rejected() -> None:
    first = FunctionAgent(a, name="worker")
    second = FunctionAgent(b, name="worker")
    with pytest.raises(TopologyError, match=r"two nodes are named 'worker'"):
        AgentGroup(name="g", topology={first: Edge(to=(second,)), second: Edge.terminal()})


async def test_two_functions_with_the_same_name_are_rejected() -> None:
    def make() -> Any:
        async def step(value: Any) -> Any:
            return value

        return step

    one, two = make(), make()
    with pytest.raises(TopologyError, match=r"two nodes are named 'step'"):
        AgentGroup(name="g", topology={one: Edge(to=(two,)), two: Edge.terminal()})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("b", r"value of node 'a' must be an Edge or a tuple of Edges, got str"),
        (None, r"value of node 'a' must be an Edge or a tuple of Edges, got NoneType"),
        ({"to": "b"}, r"value of node 'a' must be an Edge or a tuple of Edges, got dict"),
        ((Edge.terminal(), 3), r"node 'a': edge \[1\] is not an Edge, got int"),
        ((), r"node 'a' has no edges"),
    ],
)
async def test_values_that_are_not_edges_are_rejected(value: Any, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        AgentGroup(name="g", topology={a: value})


async def test_a_list_of_edges_is_accepted() -> None:
    group = AgentGroup(name="g", topology={a: [Edge(to=(b,))], b: Edge.terminal()})
    assert group.successors("a") == ("b",)


async def test_keys_must_be_agents() -> None:
    with pytest.raises(TopologyError, match=r"topology key 'a' is not an agent"):
        AgentGroup(name="g", topology={"a": Edge.terminal()})


async def test_an_empty_topology_is_rejected() -> None:
    with pytest.raises(TopologyError, match="no nodes"):
        AgentGroup(name="g", topology={})


async def test_two_edges_to_the_same_target_are_rejected() -> None:
    with pytest.raises(TopologyError, match=r"node 'a' has several edges to 'b'"):
        AgentGroup(
            name="g",
            topology={a: (Edge(to=(b,)), Edge(to=(b,), when=bool)), b: Edge.terminal()},
        )


async def test_group_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="name"):
        AgentGroup(name="", topology={a: Edge.terminal()})
    with pytest.raises(TypeError, match="mapping"):
        AgentGroup(name="g", topology=[(a, Edge.terminal())])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_concurrency"):
        AgentGroup(name="g", topology={a: Edge.terminal()}, max_concurrency=0)
    with pytest.raises(TypeError, match="fail_fast"):
        AgentGroup(name="g", topology={a: Edge.terminal()}, fail_fast=None)  # type: ignore[arg-type]


async def test_edge_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match=r"tuple of agents, e\.g\. Edge\(to=\(reviewer,\)\)"):
        Edge(to=a)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="when"):
        Edge(to=(a,), when=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mapper"):
        Edge(to=(a,), mapper="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_concurrency"):
        Edge(to=(a,), max_concurrency=0)
    with pytest.raises(ValueError, match="max_concurrency"):
        Edge(to=(a,), max_concurrency=True)
    with pytest.raises(TypeError, match="require_all_slots"):
        Edge(to=(a,), require_all_slots=1)  # type: ignore[arg-type]


async def test_edges_are_immutable_and_readable() -> None:
    def is_easy(value: Any) -> bool:
        return True

    edge = Edge(to=(a, b), when=is_easy, max_concurrency=3)
    assert edge.to == (a, b)
    assert not edge.is_terminal
    assert Edge.terminal().is_terminal
    assert repr(Edge.terminal()) == "Edge.terminal()"
    assert repr(edge).startswith("Edge(to=('a', 'b'), when=")
    assert "max_concurrency=3" in repr(edge)
    with pytest.raises(AttributeError, match="immutable"):
        edge.when = None


async def test_run_group_checks_its_arguments(runtime: AgentRuntime) -> None:
    group = AgentGroup(name="g", topology={a: Edge.terminal()})
    with pytest.raises(TypeError, match="AgentGroup"):
        await runtime.run_group({a: Edge.terminal()}, TaskSpec(input=1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="TaskSpec"):
        await runtime.run_group(group, "input")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AgentContext"):
        await runtime.run_group(group, TaskSpec(input=1), parent="ctx")  # type: ignore[arg-type]


async def test_run_group_on_a_closed_runtime_raises() -> None:
    group = AgentGroup(name="g", topology={a: Edge.terminal()})
    runtime = AgentRuntime()
    await runtime.aclose()
    with pytest.raises(RuntimeClosedError):
        await runtime.run_group(group, TaskSpec(input=1))
