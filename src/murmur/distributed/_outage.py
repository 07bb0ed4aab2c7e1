"""Broker outages: how long a broker client keeps reconnecting, and the log lines of one.

A broker restarted or unreachable for a while is waited for, not reported at once: each
adapter's client reconnects by itself (redis-py's retry policy, nats-py's reconnection,
aio-pika's robust connection) and the adapters log the outage once when it starts and
once when it ends, on the ``murmur.distributed`` logger.
"""

from __future__ import annotations

import logging
import time

__all__ = ["RECONNECT_SECONDS", "RETRY_CAP_SECONDS", "OutageLog", "backoff"]

_log = logging.getLogger("murmur.distributed")

#: Seconds one broker operation (a publish, an ack, a read) keeps reconnecting before it
#: fails. A caller's attempt gives up sooner if its deadline comes first; a worker's
#: consuming loop never gives up (it starts again after a failed read).
RECONNECT_SECONDS = 60.0
#: Longest wait between two reconnection attempts.
RETRY_CAP_SECONDS = 1.0
_RETRY_BASE_SECONDS = 0.05


def backoff(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: doubling, capped."""
    return float(min(RETRY_CAP_SECONDS, _RETRY_BASE_SECONDS * 2 ** min(failures, 16)))


class OutageLog:
    """Logs a broker's outage once as it starts (warning) and once as it ends (info)."""

    __slots__ = ("_since", "_where")

    def __init__(self, where: str) -> None:
        self._where = where
        self._since: float | None = None

    @property
    def down(self) -> bool:
        return self._since is not None

    def lost(self, error: BaseException) -> None:
        if self._since is not None:
            return
        self._since = time.monotonic()
        _log.warning(
            "broker %s unreachable (%s: %s): reconnecting",
            self._where,
            type(error).__name__,
            error,
        )

    def back(self) -> None:
        since, self._since = self._since, None
        if since is not None:
            _log.info(
                "broker %s reachable again after %.1fs", self._where, time.monotonic() - since
            )
