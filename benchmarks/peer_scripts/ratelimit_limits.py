"""``limits`` (PyPI) as a rate-limiter peer of the ``rate_limits`` scenario: its moving
window (exact: at most the limit in any window), in memory and in Redis, through the
synchronous API. It has no waiting: ``hit`` admits or refuses, and a caller that must wait
polls (here every 2 ms, until the window admits it). Weights: ``hit(..., cost=n)``. A cost
already hit cannot be given back. Each limit is one ``hit``: one round trip each."""

from __future__ import annotations

import time

from _ratelimit_peer import Peer, main
from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

HUGE = 10**9


def _limiter(url: str | None) -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(MemoryStorage() if url is None else storage_from_string(url))


def never_refuses(url: str | None, name: str) -> object:
    limiter, item = _limiter(url), RateLimitItemPerSecond(HUGE)
    # limits keeps a moving window as a list of hits: one of 10^9 grows without end, so the
    # huge limit is a fixed-window counter's cost here; see the scenario's notes.
    from limits.strategies import FixedWindowRateLimiter

    limiter = FixedWindowRateLimiter(limiter.storage)
    return lambda: limiter.hit(item, name)


def rpm_and_tpm(url: str, name: str, tokens: int) -> object:
    from limits.strategies import FixedWindowRateLimiter

    limiter = FixedWindowRateLimiter(storage_from_string(url))
    rpm, tpm = RateLimitItemPerMinute(HUGE), RateLimitItemPerMinute(HUGE)

    def acquire() -> bool:
        return limiter.hit(rpm, name, "rpm") and limiter.hit(tpm, name, "tpm", cost=tokens)

    return acquire


def blocking(url: str, name: str, rpm: int, period: float) -> object:
    limiter = _limiter(url)
    item = RateLimitItemPerSecond(rpm, int(period))

    def acquire() -> None:
        while not limiter.hit(item, name):
            time.sleep(0.002)

    return acquire


main(
    Peer(
        "limits",
        never_refuses,
        rpm_and_tpm,
        blocking,
        facts={
            "weights": "yes (cost=)",
            "correction": "no",
            "waiting": "none: the caller polls",
            "several_limits": "one hit per limit",
        },
    )
)
