"""``pyrate-limiter`` (PyPI) as a rate-limiter peer of the ``rate_limits`` scenario: its
default buckets (a sliding-window log: at most the limit in any window), ``InMemoryBucket``
and ``RedisBucket``, through the synchronous ``Limiter.try_acquire``. Waiting
(``blocking=True``) sleeps the wait the bucket computed, then tries again: the waiters are
not queued, and one that wakes to find its place taken waits again. Weights:
``try_acquire(name, weight=n)``; one bucket's rates take the same weight, so rpm and tpm
are two buckets (two round trips). A weight already taken cannot be given back."""

from __future__ import annotations

from _ratelimit_peer import Peer, main
from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate, RedisBucket
from redis import Redis

HUGE = 10**9


def _bucket(url: str | None, name: str, rates: list[Rate]) -> object:
    if url is None:
        return InMemoryBucket(rates)
    return RedisBucket.init(rates, Redis.from_url(url), name)


def never_refuses(url: str | None, name: str) -> object:
    limiter = Limiter(_bucket(url, name, [Rate(HUGE, Duration.MINUTE)]))
    return lambda: limiter.try_acquire(name, blocking=False)


def rpm_and_tpm(url: str, name: str, tokens: int) -> object:
    rpm = Limiter(_bucket(url, f"{name}-rpm", [Rate(HUGE, Duration.MINUTE)]))
    tpm = Limiter(_bucket(url, f"{name}-tpm", [Rate(HUGE, Duration.MINUTE)]))

    def acquire() -> bool:
        return bool(
            rpm.try_acquire(name, blocking=False)
            and tpm.try_acquire(name, weight=tokens, blocking=False)
        )

    return acquire


def blocking(url: str, name: str, rpm: int, period: float) -> object:
    limiter = Limiter(_bucket(url, name, [Rate(rpm, int(period * 1000))]))
    return lambda: limiter.try_acquire(name, blocking=True)


main(
    Peer(
        "pyrate-limiter",
        never_refuses,
        rpm_and_tpm,
        blocking,
        facts={
            "weights": "yes (weight=)",
            "correction": "no",
            "waiting": "sleeps the computed wait, then tries again (no queue)",
            "several_limits": "rates of one bucket: one round trip, but one weight for all",
        },
    )
)
