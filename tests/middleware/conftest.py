"""Fixtures of the policy tests that share state through Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from tests.distributed.brokers import require


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Unique names (of rate limits or budgets) for one test, made with
    ``tests.middleware.fleet.fresh``; every Redis key of theirs is deleted after it."""
    url = require("redis")
    made: list[str] = []
    yield made
    client = redis.Redis.from_url(url)
    try:
        for name in made:
            for prefix in ("murmur:ratelimit:", "murmur:budget:"):
                keys = list(client.scan_iter(match=f"{prefix}{name}*"))
                if keys:
                    client.delete(*keys)
    finally:
        client.close()
