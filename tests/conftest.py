"""Shared fixtures: every behavioural test runs on asyncio and on Trio."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from murmur import AgentRuntime


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Parametrise every ``@pytest.mark.anyio`` test over both backends."""
    return str(request.param)


@pytest.fixture
async def runtime() -> AsyncIterator[AgentRuntime]:
    """A default runtime, closed after the test."""
    async with AgentRuntime() as rt:
        yield rt


@pytest.fixture(autouse=True)
def _no_leaked_bridge_threads() -> Iterator[None]:
    """Fail a test that leaves an asyncio bridge thread running after its runtimes close."""
    before = {t for t in threading.enumerate() if t.name.startswith("murmur-")}
    yield
    leaked = [t for t in threading.enumerate() if t.name.startswith("murmur-") and t not in before]
    assert not leaked, f"leaked Murmur threads: {leaked}"
