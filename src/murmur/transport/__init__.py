"""Transports: where a runtime's tasks execute (in-process today, brokers later)."""

from .base import Transport as Transport
from .local import LocalTransport as LocalTransport

__all__ = ["LocalTransport", "Transport"]
