"""GroupScheduler is public API (``murmur.groups``): subclasses keep working."""

from __future__ import annotations

from typing import Any

import pytest

from murmur import AgentGroup, AgentResult, AgentRuntime, Edge, TaskSpec
from murmur.groups import GroupScheduler

pytestmark = pytest.mark.anyio


async def echo(value: str) -> str:
    return value


async def test_a_scheduler_subclass_still_reaches_its_runtime() -> None:
    seen: list[Any] = []

    class Auditing(GroupScheduler):
        async def _on_node_completed(self, node: str, result: AgentResult[Any]) -> None:
            # Before the reshape `self.runtime` was the AgentRuntime given to the constructor.
            seen.append(self.runtime)
            await super()._on_node_completed(node, result)

    group = AgentGroup(name="g", topology={echo: Edge.terminal()})
    async with AgentRuntime() as runtime:
        result = await Auditing(runtime, group, TaskSpec(input="x"), parent=None).run()
    assert result.output == "x"
    assert seen == [runtime]
