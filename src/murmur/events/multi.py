"""MultiEventEmitter: one event, several emitters, each isolated from the others."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import InvalidTypeError
from .log import log_exception
from .types import (
    ALL_EVENT_TYPES,
    EventEmitter,
    EventType,
    RuntimeEvent,
    emitter_stages,
    wanted_types,
)

__all__ = ["MultiEventEmitter"]


class MultiEventEmitter:
    """Fans each event out to ``emitters`` in order; one that raises does not stop the rest.

    A failing child is reported once through the log and keeps receiving later events.

    A child that declares ``event_types()`` receives only those types. What the children
    want is read when the emitter is made and again each time its own ``event_types()`` is
    asked, which the runtime does once per top-level call; so, like the runtime itself, a
    fan-out follows a child whose wishes change (a ``LogEventEmitter`` after
    ``structlog.configure``) from the next call on (also for calls already running).
    """

    def __init__(self, emitters: Iterable[EventEmitter]) -> None:
        self.emitters = tuple(emitters)
        for index, emitter in enumerate(self.emitters):
            if not callable(getattr(emitter, "emit", None)):
                raise InvalidTypeError(
                    f"emitters[{index}] must have `async def emit(self, event)`, "
                    f"got {type(emitter).__name__}"
                )
        self._reported: set[int] = set()
        self._routes: dict[EventType, tuple[tuple[int, EventEmitter], ...]] = {}
        self.event_types()

    def event_types(self) -> frozenset[EventType] | None:
        """The union of what the children want (``None``: everything)."""
        routes: dict[EventType, list[tuple[int, EventEmitter]]] = {t: [] for t in EventType}
        union: set[EventType] = set()
        everything = False
        for index, emitter in enumerate(self.emitters):
            wanted = wanted_types(emitter)
            if wanted is None:
                everything = True
                wanted = ALL_EVENT_TYPES
            union |= wanted
            for kind in wanted:
                if kind in routes:  # a type this version does not know is never emitted
                    routes[kind].append((index, emitter))
        self._routes = {kind: tuple(children) for kind, children in routes.items()}
        return None if everything else frozenset(union)

    def pipeline_stages(self) -> list[Any]:
        """The stages the children ask for, in the children's order."""
        return [stage for emitter in self.emitters for stage in emitter_stages(emitter)]

    async def emit(self, event: RuntimeEvent) -> None:
        for index, emitter in self._routes[event.type]:
            try:
                await emitter.emit(event)
            except Exception:
                if index not in self._reported:
                    self._reported.add(index)
                    log_exception(
                        "event emitter failed; its later failures are not logged",
                        emitter=type(emitter).__name__,
                        event_type=str(event.type),
                    )
