"""Redis streams are not left to grow: a reply that arrives after its caller closed does
not leave the caller's reply stream behind for good (it expires), and a settled task is
deleted from its task stream."""

from __future__ import annotations

import uuid

import anyio
import pytest
import redis.asyncio as aioredis

from murmur.distributed import parse_broker_url
from murmur.distributed._adapter import Delivery
from murmur.distributed._redis import REPLY_TTL_SECONDS, RedisAdapter

# Adapters are the asyncio side of the broker layer (FastStream is asyncio-only; under
# Trio they run on the helper loop): tested on asyncio directly.
pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

URL = "redis://127.0.0.1:6379"


async def test_a_late_reply_recreates_the_stream_only_with_an_expiry() -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    caller = RedisAdapter(parse_broker_url(URL), namespace=namespace)
    worker = RedisAdapter(parse_broker_url(URL), namespace=namespace)
    client = aioredis.Redis.from_url(URL)
    await caller.connect()
    await worker.connect()
    try:
        address = await caller.open_replies("c1", lambda data: None)
        await caller.aclose()  # deletes its reply stream
        assert await client.exists(address) == 0
        await worker.publish_reply(address, b"late")  # a worker answering a closed caller
        assert await client.exists(address) == 1
        assert 0 < await client.ttl(address) <= REPLY_TTL_SECONDS
    finally:
        await worker.aclose()
        keys = [key async for key in client.scan_iter(match=f"{namespace}.*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_a_settled_task_leaves_its_stream() -> None:
    """Acknowledged entries are deleted with their ack: a task stream holds only the tasks
    not yet settled, however many went through it."""
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    caller = RedisAdapter(parse_broker_url(URL), namespace=namespace)
    worker = RedisAdapter(parse_broker_url(URL), namespace=namespace)
    client = aioredis.Redis.from_url(URL)
    await caller.connect()
    await worker.connect()
    settled = anyio.Event()
    seen: list[bytes] = []

    async def take(data: bytes, delivery: Delivery) -> None:
        seen.append(data)
        await delivery.ack()
        if len(seen) == 20:
            settled.set()

    try:
        for i in range(20):
            await caller.publish_task("shout", b"task %d" % i)
        stream = caller.task_channel("shout")
        assert await client.xlen(stream) == 20
        await worker.consume(["shout"], take, prefetch=5, consumer="w1")
        with anyio.fail_after(10):
            await settled.wait()
        assert sorted(seen) == sorted(b"task %d" % i for i in range(20))
        assert await client.xlen(stream) == 0
        assert (await client.xpending(stream, worker.group))["pending"] == 0
    finally:
        await worker.aclose()
        await caller.aclose()
        keys = [key async for key in client.scan_iter(match=f"{namespace}.*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
