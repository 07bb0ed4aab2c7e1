"""Redis streams are not left to grow: a reply that arrives after its caller closed does
not leave the caller's reply stream behind for good (it expires), and a settled task is
deleted from its task stream."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

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


class Pair:
    """A caller's adapter and a worker's on one fresh namespace, and a plain client."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.caller = RedisAdapter(parse_broker_url(URL), namespace=namespace)
        self.worker = RedisAdapter(parse_broker_url(URL), namespace=namespace)
        self.client = aioredis.Redis.from_url(URL)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    pair = Pair(f"t-{uuid.uuid4().hex[:8]}")
    await pair.caller.connect()
    await pair.worker.connect()
    try:
        yield pair
    finally:
        await pair.worker.aclose()
        await pair.caller.aclose()
        client = pair.client
        keys = [key async for key in client.scan_iter(match=f"{pair.namespace}.*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_a_late_reply_recreates_the_stream_only_with_an_expiry(pair: Pair) -> None:
    client = pair.client
    address = await pair.caller.open_replies("c1", lambda data: None)
    await pair.caller.aclose()  # deletes its reply stream
    assert await client.exists(address) == 0
    await pair.worker.publish_reply(address, b"late")  # a worker answering a closed caller
    assert await client.exists(address) == 1
    assert 0 < await client.ttl(address) <= REPLY_TTL_SECONDS


async def test_a_settled_task_leaves_its_stream(pair: Pair) -> None:
    """Acknowledged entries are deleted with their ack: a task stream holds only the tasks
    not yet settled, however many went through it."""
    caller, worker, client = pair.caller, pair.worker, pair.client
    settled = anyio.Event()
    seen: list[bytes] = []

    async def take(data: bytes, delivery: Delivery) -> None:
        seen.append(data)
        await delivery.ack()
        if len(seen) == 20:
            settled.set()

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


async def test_settling_sends_the_results_then_acknowledges_in_one_call(pair: Pair) -> None:
    """``settle``: the results of tasks settled together go with their acknowledgements in
    one script call, results first; a result the server refuses (here a reply key of the
    wrong type) stops the call before any acknowledgement: every task of that call stays
    pending, to be delivered again, and the results that went through are kept."""
    caller, worker, client = pair.caller, pair.worker, pair.client
    calls: list[int] = []
    settle_batch = worker._settles._flush

    async def counted(batch: Any) -> None:
        calls.append(len(batch))
        await settle_batch(batch)

    worker._settles._flush = counted
    taken: list[Delivery] = []
    all_taken = anyio.Event()

    async def take(data: bytes, delivery: Delivery) -> None:
        taken.append(delivery)
        if len(taken) == 6:
            all_taken.set()

    good = f"{pair.namespace}.reply.good"
    bad = f"{pair.namespace}.reply.bad"
    await client.set(bad, "not a stream")
    for i in range(6):
        await caller.publish_task("shout", b"task %d" % i)
    stream = caller.task_channel("shout")
    await worker.consume(["shout"], take, prefetch=10, consumer="w1")
    with anyio.fail_after(10):
        await all_taken.wait()
    async with anyio.create_task_group() as tg:
        for delivery in taken[:3]:
            tg.start_soon(worker.settle, good, b"result", delivery)
    assert calls == [1, 2]  # the first at once, the two that queued meanwhile together
    assert await client.xlen(good) == 3
    assert 0 < await client.ttl(good) <= REPLY_TTL_SECONDS
    assert (await client.xpending(stream, worker.group))["pending"] == 3
    failures: list[str] = []

    async def settle(address: str, delivery: Delivery) -> None:
        try:
            await worker.settle(address, b"result", delivery)
        except Exception as exc:
            failures.append(str(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(settle, good, taken[3])
        tg.start_soon(settle, bad, taken[4])
        tg.start_soon(settle, good, taken[5])
    assert calls == [1, 2, 1, 2]
    # The first went alone, and through; the two after it failed together.
    assert len(failures) == 2
    assert all("WRONGTYPE" in failure for failure in failures)
    assert await client.xlen(good) == 4
    assert (await client.xpending(stream, worker.group))["pending"] == 2  # not acked
    assert await client.xlen(stream) == 2  # nor deleted
