"""MultiEventEmitter: one event, several emitters, each isolated from the others."""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from .types import EventEmitter, EventType, RuntimeEvent, wanted_types

__all__ = ["MultiEventEmitter"]

_log = structlog.get_logger("murmur")


class MultiEventEmitter:
    """Fans each event out to ``emitters`` in order; one that raises does not stop the rest.

    A failing child is reported once through the log and keeps receiving later events.
    """

    def __init__(self, emitters: Iterable[EventEmitter]) -> None:
        self.emitters = tuple(emitters)
        for index, emitter in enumerate(self.emitters):
            if not callable(getattr(emitter, "emit", None)):
                raise TypeError(
                    f"emitters[{index}] must have `async def emit(self, event)`, "
                    f"got {type(emitter).__name__}"
                )
        self._reported: set[int] = set()

    def event_types(self) -> frozenset[EventType] | None:
        """The union of what the children want (``None``: everything)."""
        union: set[EventType] = set()
        for emitter in self.emitters:
            wanted = wanted_types(emitter)
            if wanted is None:
                return None
            union |= wanted
        return frozenset(union)

    async def emit(self, event: RuntimeEvent) -> None:
        for index, emitter in enumerate(self.emitters):
            try:
                await emitter.emit(event)
            except Exception:
                if index not in self._reported:
                    self._reported.add(index)
                    _log.exception(
                        "event emitter failed; its later failures are not logged",
                        emitter=type(emitter).__name__,
                        event_type=str(event.type),
                    )
