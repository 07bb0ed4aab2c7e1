"""``redis-rate-limiters`` (PyPI, import ``limiters``) as a rate-limiter peer of the
``rate_limits`` scenario: its ``SyncTokenBucket`` (Redis only). An acquisition reserves the
next slot in one Lua script and sleeps until it: waiters are served in the order they
reached Redis. One token per acquisition (no weights), one bucket per call (rpm and tpm
would be two round trips, and tpm cannot be expressed), nothing given back. Its slots are
milliseconds on the callers' clocks."""

from __future__ import annotations

from _ratelimit_peer import Peer, main
from limiters import SyncTokenBucket
from redis import Redis

HUGE = 10**9


def never_refuses(url: str | None, name: str) -> object:
    if url is None:
        return None  # Redis only
    bucket = SyncTokenBucket(
        connection=Redis.from_url(url),
        name=name,
        capacity=HUGE,
        # Long slots: one that passed moves the next slot 20 ms ahead, and every
        # acquisition would then sleep until it.
        refill_frequency=3600,
        refill_amount=HUGE,
    )

    def acquire() -> None:
        with bucket:
            pass

    return acquire


def rpm_and_tpm(url: str, name: str, tokens: int) -> None:
    return None  # one token per acquisition: a tpm limit cannot be stated


def blocking(url: str, name: str, rpm: int, period: float) -> object:
    bucket = SyncTokenBucket(
        connection=Redis.from_url(url),
        name=name,
        capacity=1,
        refill_frequency=period / rpm,
        refill_amount=1,
    )

    def acquire() -> None:
        with bucket:
            pass

    return acquire


main(
    Peer(
        "redis-rate-limiters",
        never_refuses,
        rpm_and_tpm,
        blocking,
        facts={
            "weights": "no (one token per acquisition)",
            "correction": "no",
            "waiting": "reserves a slot, sleeps until it (first come, first served)",
            "several_limits": "one bucket per acquisition",
        },
    )
)
