"""LogEventEmitter: every runtime event written through structlog (the default emitter)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .types import EventType, RuntimeEvent

__all__ = ["DEFAULT_LEVELS", "LogEventEmitter", "murmur_log"]

#: Failures and refusals at warning, batch/group/worker lifecycle at info, per-task detail at debug.
DEFAULT_LEVELS: Mapping[EventType, int] = {
    EventType.TASK_STARTED: logging.DEBUG,
    EventType.TASK_SUCCEEDED: logging.DEBUG,
    EventType.TASK_FAILED: logging.WARNING,
    EventType.TASK_CANCELLED: logging.INFO,
    EventType.RETRY_SCHEDULED: logging.INFO,
    EventType.ATTEMPT_TIMED_OUT: logging.WARNING,
    EventType.BUDGET_EXCEEDED: logging.WARNING,
    EventType.DEPTH_LIMIT_EXCEEDED: logging.WARNING,
    EventType.CHILD_SPAWNED: logging.DEBUG,
    EventType.BATCH_STARTED: logging.INFO,
    EventType.BATCH_COMPLETED: logging.INFO,
    EventType.GROUP_STARTED: logging.INFO,
    EventType.NODE_STARTED: logging.DEBUG,
    EventType.NODE_COMPLETED: logging.DEBUG,
    EventType.GROUP_COMPLETED: logging.INFO,
    EventType.WORKER_STARTED: logging.INFO,
    EventType.WORKER_STOPPED: logging.INFO,
    EventType.WORKER_HEARTBEAT: logging.DEBUG,
}


def murmur_log() -> Any:
    """Murmur's own structlog logger (for an emitter that failed, say), imported when first
    needed: ``import murmur`` need not load structlog, nor the rich it brings along."""
    import structlog

    return structlog.get_logger("murmur")


class LogEventEmitter:
    """Writes each event through structlog, into whatever sink structlog is configured for.

    Args:
        logger: A structlog logger; default ``structlog.get_logger("murmur.events")``,
            resolved at each top-level call so later ``structlog.configure`` takes effect.
        min_level: Events below this level are not logged (default ``logging.INFO``, so
            per-task detail stays quiet unless asked for with ``logging.DEBUG``).
        levels: Per-type level overrides.

    Events that neither ``min_level`` nor structlog's own level filter would let through are
    never even built: the runtime asks ``event_types()`` once per call.
    """

    def __init__(
        self,
        logger: Any = None,
        *,
        min_level: int = logging.INFO,
        levels: Mapping[EventType, int] | None = None,
    ) -> None:
        self._logger = logger
        self._levels = {**DEFAULT_LEVELS, **(levels or {})}
        self.min_level = min_level

    def _bound(self) -> Any:
        import structlog  # see murmur_log

        logger = self._logger if self._logger is not None else structlog.get_logger("murmur.events")
        return logger.bind()

    def event_types(self) -> frozenset[EventType]:
        """The event types this emitter would log right now."""
        bound = self._bound()
        check = getattr(bound, "is_enabled_for", None)
        enabled: dict[int, bool] = {}
        wanted = []
        for kind, level in self._levels.items():
            if level < self.min_level:
                continue
            if level not in enabled:
                enabled[level] = True if check is None else bool(check(level))
            if enabled[level]:
                wanted.append(kind)
        return frozenset(wanted)

    async def emit(self, event: RuntimeEvent) -> None:
        level = self._levels.get(event.type, logging.INFO)
        if level < self.min_level:
            return
        fields = event.model_dump(mode="json", exclude_none=True, exclude={"type"})
        if not fields.get("data"):
            fields.pop("data", None)
        self._bound().log(level, str(event.type), **fields)
