"""Review of the distributed hot path, adversarially: the Redis settle script with many
task streams and ids, after a server restart (its script cache emptied), entries in
FastStream's own format on task and reply streams, and the worker's hand-over of a task
to a slot while it stops."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis
from faststream.redis import RedisBroker

from distributed.servers import RedisServer
from murmur.distributed import parse_broker_url
from murmur.distributed._adapter import Delivery
from murmur.distributed._redis import RedisAdapter

# Adapters are the asyncio side of the broker layer (FastStream is asyncio-only; under
# Trio they run on the helper loop): tested on asyncio directly.
pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

URL = "redis://127.0.0.1:6379"


class Pair:
    """A caller's adapter and a worker's on one fresh namespace, and a plain client."""

    def __init__(self, url: str, namespace: str) -> None:
        self.namespace = namespace
        self.caller = RedisAdapter(parse_broker_url(url), namespace=namespace)
        self.worker = RedisAdapter(parse_broker_url(url), namespace=namespace)
        self.client = aioredis.Redis.from_url(url)

    async def close(self) -> None:
        await self.worker.aclose()
        await self.caller.aclose()
        keys = [key async for key in self.client.scan_iter(match=f"{self.namespace}.*")]
        if keys:
            await self.client.delete(*keys)
        await self.client.aclose()


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    pair = Pair(URL, f"t-{uuid.uuid4().hex[:8]}")
    await pair.caller.connect()
    await pair.worker.connect()
    try:
        yield pair
    finally:
        await pair.close()


async def take_all(pair: Pair, agents: list[str], count: int) -> list[tuple[bytes, Delivery]]:
    """The worker's adapter consumes ``agents`` until ``count`` tasks are held."""
    taken: list[tuple[bytes, Delivery]] = []
    all_taken = anyio.Event()

    async def take(data: bytes, delivery: Delivery) -> None:
        taken.append((data, delivery))
        if len(taken) == count:
            all_taken.set()

    await pair.worker.consume(agents, take, prefetch=count, consumer="w1")
    with anyio.fail_after(10):
        await all_taken.wait()
    return taken


async def test_one_settle_call_spans_several_task_streams_and_reply_streams(pair: Pair) -> None:
    """The script's arguments as laid out for a batch mixing three task streams (their
    ids interleaved) and two reply streams: every result reaches its own reply stream
    with its own body, in order, and every task (only those) is acknowledged."""
    caller, worker, client = pair.caller, pair.worker, pair.client
    calls: list[int] = []
    settle_batch = worker._settles._flush

    async def counted(batch: list[tuple[str, bytes, str, bytes]]) -> None:
        calls.append(len(batch))
        await settle_batch(batch)

    worker._settles._flush = counted
    agents = ["a", "b", "c"]
    for i in range(30):
        await caller.publish_task(agents[i % 3], b"task %d" % i)
    await caller.publish_task("a", b"kept")  # not settled: stays pending
    taken = await take_all(pair, agents, 31)
    kept = next(delivery for data, delivery in taken if data == b"kept")
    settled = [(data, delivery) for data, delivery in taken if data != b"kept"]
    replies = [f"{pair.namespace}.reply.one", f"{pair.namespace}.reply.two"]
    # Settled all together: one call holding the first alone, the rest together.
    async with anyio.create_task_group() as tg:
        for i, (data, delivery) in enumerate(settled):
            tg.start_soon(worker.settle, replies[i % 2], b"result of " + data, delivery)
    assert sum(calls) == 30
    assert len(calls) == 2
    for i, address in enumerate(replies):
        entries = await client.xrange(address)
        bodies = [fields[b"m"] for _, fields in entries]
        assert bodies == [b"result of " + data for data, _ in settled[i::2]]
    for agent in agents:
        stream = caller.task_channel(agent)
        pending = (await client.xpending(stream, worker.group))["pending"]
        assert pending == (1 if agent == "a" else 0)
        assert await client.xlen(stream) == (1 if agent == "a" else 0)
    await kept.nack()


async def test_a_settle_after_the_server_restarted_reloads_its_script(tmp_path: Path) -> None:
    """A restart empties the server's script cache: the settle call after it (NOSCRIPT)
    loads the script again and goes through, rather than failing every settle."""
    server = RedisServer(tmp_path / "data")
    server.start()
    try:
        pair = Pair(server.url, f"t-{uuid.uuid4().hex[:8]}")
        await pair.caller.connect()
        await pair.worker.connect()
        try:
            for i in range(2):
                await pair.caller.publish_task("a", b"task %d" % i)
            taken = await take_all(pair, ["a"], 2)
            reply = f"{pair.namespace}.reply.one"
            await pair.worker.settle(reply, b"first", taken[0][1])
            server.restart()  # its script cache empty, and every connection dropped
            with anyio.fail_after(10):
                await pair.worker.settle(reply, b"second", taken[1][1])
            entries = await pair.client.xrange(reply)
            assert [fields[b"m"] for _, fields in entries] == [b"first", b"second"]
            stream = pair.caller.task_channel("a")
            assert (await pair.client.xpending(stream, pair.worker.group))["pending"] == 0
        finally:
            await pair.close()
    finally:
        server.kill()


async def test_entries_in_faststreams_format_still_parse(pair: Pair) -> None:
    """Entries published through FastStream (as Murmur did before it wrote its own
    ``BODY`` field) reach the handlers as the bytes published, on a task stream and on a
    reply stream alike, now that the handlers take their batch undecoded."""
    caller, worker = pair.caller, pair.worker
    replies: list[bytes] = []
    got_reply = anyio.Event()

    def on_reply(data: bytes) -> None:
        replies.append(data)
        got_reply.set()

    address = await caller.open_replies("c1", on_reply)
    legacy = RedisBroker(URL)
    await legacy.connect()
    try:
        await legacy.publish(b"legacy task", stream=caller.task_channel("a"))
        await legacy.publish(b"legacy reply", stream=address)
    finally:
        await legacy.stop()
    taken = await take_all(pair, ["a"], 1)
    assert [data for data, _ in taken] == [b"legacy task"]
    with anyio.fail_after(10):
        await got_reply.wait()
    assert replies == [b"legacy reply"]
    await worker.settle(address, b"done", taken[0][1])


async def test_a_task_whose_result_failed_to_go_stays_held_through_a_stop(pair: Pair) -> None:
    """A settle the server refused (the worker sends the result again, for as long as its
    caller may wait) leaves the task held by this worker: a stop, which hands back what
    the worker read ahead but never started, does not hand it to another worker to run
    again while this one still has its result to send."""
    caller, worker, client = pair.caller, pair.worker, pair.client
    await caller.publish_task("a", b"task")
    ((_, delivery),) = await take_all(pair, ["a"], 1)
    bad = f"{pair.namespace}.reply.bad"
    await client.set(bad, "not a stream")
    with pytest.raises(Exception, match="WRONGTYPE"):
        await worker.settle(bad, b"result", delivery)
    await worker.stop_consuming()  # releases the read-ahead it never started
    stream = caller.task_channel("a")
    (entry,) = await client.xpending_range(stream, worker.group, "-", "+", 10)
    assert entry["consumer"].startswith(b"w1-")  # still this worker's, not released
    await client.delete(bad)
    await worker.settle(bad, b"result", delivery)  # the next try goes through
    assert (await client.xpending(stream, worker.group))["pending"] == 0
