"""Typed runtime events and the emitters that receive them."""

from .buffered import BufferedEmitter as BufferedEmitter
from .filters import FilteredEmitter as FilteredEmitter
from .filters import by_agent as by_agent
from .filters import by_type as by_type
from .filters import filtered as filtered
from .log import LogEventEmitter as LogEventEmitter
from .multi import MultiEventEmitter as MultiEventEmitter
from .otel import OpenTelemetryEmitter as OpenTelemetryEmitter
from .sse import SSEEventEmitter as SSEEventEmitter
from .types import EventEmitter as EventEmitter
from .types import EventError as EventError
from .types import EventType as EventType
from .types import RuntimeEvent as RuntimeEvent

__all__ = [
    "BufferedEmitter",
    "EventEmitter",
    "EventError",
    "EventType",
    "FilteredEmitter",
    "LogEventEmitter",
    "MultiEventEmitter",
    "OpenTelemetryEmitter",
    "RuntimeEvent",
    "SSEEventEmitter",
    "by_agent",
    "by_type",
    "filtered",
]
