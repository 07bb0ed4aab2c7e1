"""The namespace's JetStream streams, created by whichever process comes first: several
workers starting at once all connect (the server may tell one that its subjects overlap
the stream another is creating just then), while a stream of another name holding the
namespace's subjects for good is still an error."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import anyio
import nats
import pytest
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError

from distributed.brokers import NATS_URL, delete_nats_stream, require
from murmur.distributed import _nats as nats_module
from murmur.distributed import parse_broker_url
from murmur.distributed._nats import NatsAdapter

# Adapters are the asyncio side of the broker layer: tested on asyncio directly.
pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


@pytest.fixture
def namespace() -> Any:
    require("nats")
    name = f"t-streams-{uuid.uuid4().hex[:8]}"
    yield name
    delete_nats_stream(name)


async def test_workers_starting_at_once_all_connect(namespace: str) -> None:
    adapters = [NatsAdapter(parse_broker_url(NATS_URL), namespace=namespace) for _ in range(4)]
    try:
        await asyncio.gather(*(adapter.connect() for adapter in adapters))
    finally:
        for adapter in adapters:
            await adapter.aclose()


async def test_an_overlap_while_another_creates_the_stream_is_asked_again(
    namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nats_module, "_CREATE_BACKOFF", 0.0)
    original = nats.js.JetStreamContext.add_stream
    calls: list[str] = []

    async def add_stream(self: Any, config: StreamConfig, **kwargs: Any) -> Any:
        calls.append(config.name or "")
        if len(calls) == 1:
            raise BadRequestError(
                code=400, err_code=10065, description="subjects overlap with an existing stream"
            )
        return await original(self, config, **kwargs)

    monkeypatch.setattr(nats.js.JetStreamContext, "add_stream", add_stream)
    adapter = NatsAdapter(parse_broker_url(NATS_URL), namespace=namespace)
    try:
        await adapter.connect()
    finally:
        await adapter.aclose()
    assert calls == [adapter.stream, adapter.stream, adapter.dead_stream]


async def test_another_stream_holding_the_subjects_is_an_error(
    namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nats_module, "_CREATE_BACKOFF", 0.0)
    client = await nats.connect(NATS_URL)
    squatter = f"other-{namespace}"
    await client.jetstream().add_stream(
        StreamConfig(name=squatter, subjects=[f"{namespace}.tasks.>"])
    )
    adapter = NatsAdapter(parse_broker_url(NATS_URL), namespace=namespace)
    try:
        with anyio.fail_after(10), pytest.raises(BadRequestError, match="overlap"):
            await adapter.connect()
    finally:
        await adapter.aclose()
        await client.jetstream().delete_stream(squatter)
        await client.close()
