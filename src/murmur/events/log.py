"""LogEventEmitter: every runtime event written to the application's logs (the default emitter).

A library never prints: events go through structlog when the application has configured
it, and otherwise to the standard ``logging`` logger ``murmur.events``, which is silent
until the application configures logging (warnings reach stderr through logging's last
resort).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

from .types import EventType, RuntimeEvent

__all__ = ["DEFAULT_LEVELS", "LogEventEmitter", "log_exception"]

#: Where events go (a child of ``RUNTIME_LOGGER``, so configuring ``murmur`` covers both).
EVENTS_LOGGER = "murmur.events"
#: Where the runtime reports its own trouble (an emitter that raised).
RUNTIME_LOGGER = "murmur"

#: Failures and refusals at warning, batch/group/worker lifecycle at info, per-task detail at debug.
DEFAULT_LEVELS: Mapping[EventType, int] = {
    EventType.TASK_STARTED: logging.DEBUG,
    EventType.TASK_SUCCEEDED: logging.DEBUG,
    EventType.TASK_FAILED: logging.WARNING,
    EventType.TASK_CANCELLED: logging.INFO,
    EventType.RETRY_SCHEDULED: logging.INFO,
    EventType.ATTEMPT_TIMED_OUT: logging.WARNING,
    EventType.BUDGET_EXCEEDED: logging.WARNING,
    EventType.RATE_LIMIT_WAITED: logging.DEBUG,
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


def _configured_structlog() -> Any:
    """structlog, if the application has configured it; else ``None``.

    An application that configured structlog has imported it: when it is not loaded,
    ``import murmur`` need not load it either (nor the rich it brings along).
    """
    module = sys.modules.get("structlog")
    if module is None or not module.is_configured():
        return None
    return module


class LogEventEmitter:
    """Writes each event to the application's logs: structlog if configured, else ``logging``.

    With ``structlog.configure(...)`` called, events go through structlog into whatever sink
    it is configured for, the event type as the event and its fields as key-value pairs.
    Otherwise they go to the standard ``logging`` logger ``murmur.events``: the message is
    the event type followed by its fields as ``key=value``, and each field is also on the
    record (``extra``, with ``event_type``). Murmur never writes to stdout.

    Args:
        logger: A structlog logger or a ``logging.Logger`` to use instead. By default the
            choice above is made at each top-level call, so a later ``structlog.configure``
            or ``logging`` setup takes effect.
        min_level: Events below this level are not logged (default ``logging.INFO``, so
            per-task detail stays quiet unless asked for with ``logging.DEBUG``).
        levels: Per-type level overrides.

    Events that neither ``min_level`` nor the logger's own level would let through are
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

    def _target(self) -> tuple[Any, bool]:
        """The logger to write to now, and whether it is a standard ``logging`` one."""
        logger = self._logger
        if logger is None:
            structlog = _configured_structlog()
            if structlog is not None:
                return structlog.get_logger(EVENTS_LOGGER).bind(), False
            return logging.getLogger(EVENTS_LOGGER), True
        if isinstance(logger, logging.Logger):
            return logger, True
        return logger.bind(), False

    def event_types(self) -> frozenset[EventType]:
        """The event types this emitter would log right now."""
        logger, stdlib = self._target()
        check = logger.isEnabledFor if stdlib else getattr(logger, "is_enabled_for", None)
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
        logger, stdlib = self._target()
        if stdlib and not logger.isEnabledFor(level):
            return
        fields = event.model_dump(mode="json", exclude_none=True, exclude={"type"})
        if not fields.get("data"):
            fields.pop("data", None)
        kind = str(event.type)
        if stdlib:
            logger.log(level, _line(kind, fields), extra={"event_type": kind, **fields})
        else:
            logger.log(level, kind, **fields)


def log_exception(message: str, **fields: Any) -> None:
    """Report the exception being handled on the ``murmur`` logger, never on stdout.

    Through structlog when the application has configured it, else at error level through
    standard ``logging`` (stderr by logging's last resort until logging is configured).
    For the runtime's own trouble, such as an emitter that raised; call it in ``except``.
    """
    structlog = _configured_structlog()
    if structlog is not None:
        structlog.get_logger(RUNTIME_LOGGER).exception(message, **fields)
    else:
        logging.getLogger(RUNTIME_LOGGER).error(_line(message, fields), exc_info=True, extra=fields)


# A value that reads unambiguously after `key=` without quotes.
_BARE = re.compile(r'[^\s="\\]+')


def _line(message: str, fields: Mapping[str, Any]) -> str:
    """``message key=value ...``: the fields readable in a plain-text log (no timestamp,
    the record has its own)."""
    parts = [message]
    for key, value in fields.items():
        if key == "timestamp":
            continue
        if isinstance(value, str) and _BARE.fullmatch(value):
            parts.append(f"{key}={value}")
        else:
            parts.append(f"{key}={json.dumps(value, separators=(',', ':'), default=str)}")
    return " ".join(parts)
