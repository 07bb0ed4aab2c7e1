"""Helpers shared by the test suites."""

from __future__ import annotations

import ast
from typing import Any

from murmur import EventType, RuntimeEvent


class Recorder:
    """An event emitter that keeps every event it is handed."""

    def __init__(self) -> None:
        self.events: list[RuntimeEvent] = []

    async def emit(self, event: RuntimeEvent) -> None:
        self.events.append(event)

    def types(self) -> list[EventType]:
        """The types of the events so far, in order."""
        return [e.type for e in self.events]

    def of(self, kind: EventType) -> list[RuntimeEvent]:
        """The events of one type, in order."""
        return [e for e in self.events if e.type is kind]


async def exec_snippet(source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Run ``source`` (which may ``await`` at top level) with ``namespace`` as its globals."""
    code = compile(source, "<cookbook>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    outcome = eval(code, namespace)
    if outcome is not None:
        await outcome
    return namespace
