"""Filtering helpers usable with any emitter."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .types import EventEmitter, EventType, RuntimeEvent, emitter_stages, wanted_types

__all__ = ["FilteredEmitter", "by_agent", "by_type", "filtered"]

Predicate = Callable[[RuntimeEvent], bool]


def by_type(*types: EventType | str) -> Predicate:
    """Match events of any of ``types``."""
    wanted = frozenset(EventType(t) for t in types)
    return lambda event: event.type in wanted


def by_agent(*agents: str) -> Predicate:
    """Match events about any of the named agents."""
    names = frozenset(agents)
    return lambda event: event.agent in names


class FilteredEmitter:
    """Passes on to ``emitter`` only the events matching every predicate.

    Args:
        emitter: The emitter to feed.
        predicates: Conditions an event must all meet (see ``by_type``, ``by_agent``).
        types: Shortcut for ``by_type(*types)``; also lets the runtime skip building
            events nobody wants.
    """

    def __init__(
        self,
        emitter: EventEmitter,
        *predicates: Predicate,
        types: Iterable[EventType | str] | None = None,
    ) -> None:
        self.emitter = emitter
        self.predicates = predicates
        self.types = None if types is None else frozenset(EventType(t) for t in types)

    def event_types(self) -> frozenset[EventType] | None:
        inner = wanted_types(self.emitter)
        if self.types is None:
            return inner
        return self.types if inner is None else self.types & inner

    def pipeline_stages(self) -> list[Any]:
        """The wrapped emitter's stages."""
        return emitter_stages(self.emitter)

    async def emit(self, event: RuntimeEvent) -> None:
        if self.types is not None and event.type not in self.types:
            return
        if all(predicate(event) for predicate in self.predicates):
            await self.emitter.emit(event)


def filtered(
    emitter: EventEmitter, *predicates: Predicate, types: Iterable[EventType | str] | None = None
) -> FilteredEmitter:
    """Shorthand for ``FilteredEmitter(emitter, *predicates, types=types)``."""
    return FilteredEmitter(emitter, *predicates, types=types)
