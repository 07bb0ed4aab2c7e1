"""Transports: where a runtime's attempts run (in-process, or elsewhere as envelopes)."""

from .._envelope import EventSink as EventSink
from .._envelope import TaskEnvelope as TaskEnvelope
from .._executor import Executor as Executor
from .base import Transport as Transport
from .local import LocalTransport as LocalTransport
from .loopback import LoopbackTransport as LoopbackTransport

__all__ = [
    "EventSink",
    "Executor",
    "LocalTransport",
    "LoopbackTransport",
    "TaskEnvelope",
    "Transport",
]
