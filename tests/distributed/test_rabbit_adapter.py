"""The RabbitMQ adapter's own behaviour, against the local server (a failure when it is not
reachable): how a worker consumes, how a caller declares, what it warns about.

Each test uses its own namespace and deletes the queues it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest
from faststream.rabbit import RabbitBroker

from distributed.brokers import delete_rabbit_queues, on_asyncio, require
from murmur.distributed import _rabbit
from murmur.distributed._adapter import Delivery
from murmur.distributed._amqp import Consumer
from murmur.distributed._rabbit import RabbitAdapter
from murmur.distributed._url import parse_broker_url

pytestmark = pytest.mark.anyio


AGENTS = ["a", "b"]


@pytest.fixture
def namespace() -> Iterator[str]:
    namespace = f"t-rabbit-{uuid.uuid4().hex[:10]}"
    yield namespace
    delete_rabbit_queues(namespace, AGENTS)


def adapter(namespace: str) -> RabbitAdapter:
    return RabbitAdapter(parse_broker_url(require("rabbit")), namespace=namespace)


async def queue_counts(name: str) -> tuple[int, int]:
    """The queue's ready messages and consumers, as the server counts them."""
    connection = await aio_pika.connect(require("rabbit"))
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        result = queue.declaration_result
        return result.message_count or 0, result.consumer_count or 0
    finally:
        await connection.close()


class Proxy:
    """A TCP proxy to the local RabbitMQ server whose connections can be cut (a network
    drop for the clients behind it alone); it keeps listening, so they reconnect."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5672)
        self._writers += [writer, up_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_a_reply_sent_while_its_caller_reconnects_waits_for_it(namespace: str) -> None:
    async def scenario() -> list[bytes]:
        replies: list[bytes] = []
        got = asyncio.Event()

        def on_reply(data: bytes) -> None:
            replies.append(data)
            got.set()

        async with Proxy() as proxy:
            caller_side = RabbitAdapter(parse_broker_url(proxy.url()), namespace=namespace)
            worker_side = adapter(namespace)
            await caller_side.connect()
            await worker_side.connect()
            try:
                address = await caller_side.open_replies("c1", on_reply)
                proxy.cut()  # the caller's connection drops; it reconnects a second later
                await worker_side.publish_reply(address, b"the result")
                await asyncio.wait_for(got.wait(), 20)
            finally:
                await caller_side.aclose()
                await worker_side.aclose()
        return replies

    assert await on_asyncio(scenario) == [b"the result"]


async def test_a_closing_caller_deletes_its_reply_queue(namespace: str) -> None:
    async def scenario() -> bool:
        caller_side = adapter(namespace)
        await caller_side.connect()
        try:
            address = await caller_side.open_replies("c1", lambda data: None)
        finally:
            await caller_side.aclose()
        try:
            await queue_counts(address)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return False
        return True

    assert await on_asyncio(scenario) is False


async def test_a_failed_consumer_start_leaves_no_consumer_behind(
    namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first try fails once the first queue's consumer has started.
    original = Consumer.consume
    failed: list[str] = []

    async def consume_once_failing(self: Consumer, queue: str, tag: str) -> None:
        if queue.endswith(".b") and not failed:
            failed.append(queue)
            raise ConnectionError("injected: the consumer could not start")
        await original(self, queue, tag)

    monkeypatch.setattr(Consumer, "consume", consume_once_failing)

    async def scenario() -> list[tuple[int, int]]:
        worker_side = adapter(namespace)

        async def take(data: bytes, delivery: Delivery) -> None:
            await delivery.ack()

        await worker_side.connect()
        try:
            await worker_side.consume(AGENTS, take, prefetch=1, consumer="w")
            return [await queue_counts(worker_side.task_channel(a)) for a in AGENTS]
        finally:
            await worker_side.aclose()

    counts = await on_asyncio(scenario)
    assert failed  # the fault did happen
    assert [consumers for _, consumers in counts] == [1, 1]  # one consumer each, none stale


async def test_a_worker_takes_at_most_prefetch_tasks_ahead(namespace: str) -> None:
    async def scenario() -> tuple[int, int]:
        worker_side, caller_side = adapter(namespace), adapter(namespace)
        taken: list[Delivery] = []
        two = asyncio.Event()

        async def take(data: bytes, delivery: Delivery) -> None:
            taken.append(delivery)  # held: never settled while the test looks
            if len(taken) == 2:
                two.set()

        await worker_side.connect()
        await caller_side.connect()
        try:
            for i in range(5):
                await caller_side.publish_task("a", b"task %d" % i)
            await worker_side.consume(["a"], take, prefetch=2, consumer="w")
            await asyncio.wait_for(two.wait(), 10)
            ready, _ = await queue_counts(caller_side.task_channel("a"))
            return len(taken), ready
        finally:
            await worker_side.aclose()
            await caller_side.aclose()

    # Two taken, three left for other workers.
    assert await on_asyncio(scenario) == (2, 3)


async def test_concurrent_first_publishes_declare_the_queue_once(
    namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    declared: list[str] = []
    original = RabbitBroker.declare_queue

    async def counting(self: RabbitBroker, queue: Any) -> Any:
        declared.append(queue.name)
        return await original(self, queue)

    monkeypatch.setattr(RabbitBroker, "declare_queue", counting)

    async def scenario() -> tuple[int, int]:
        caller_side = adapter(namespace)
        await caller_side.connect()
        try:
            await asyncio.gather(*(caller_side.publish_task("a", b"t%d" % i) for i in range(10)))
            await caller_side.publish_task("a", b"one more")
            ready, _ = await queue_counts(caller_side.task_channel("a"))
            return declared.count(caller_side.task_channel("a")), ready
        finally:
            await caller_side.aclose()

    assert await on_asyncio(scenario) == (1, 11)


async def test_a_task_held_near_the_consumer_timeout_is_warned_about_once(
    namespace: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_rabbit, "CONSUMER_TIMEOUT_WARNING", 0.0)  # every task is "long"

    async def scenario() -> None:
        worker_side, caller_side = adapter(namespace), adapter(namespace)
        done = asyncio.Event()
        settled: list[bytes] = []

        async def take(data: bytes, delivery: Delivery) -> None:
            await delivery.ack()
            settled.append(data)
            if len(settled) == 2:
                done.set()

        await worker_side.connect()
        await caller_side.connect()
        try:
            await worker_side.consume(["a"], take, prefetch=2, consumer="w")
            await caller_side.publish_task("a", b"one")
            await caller_side.publish_task("a", b"two")
            await asyncio.wait_for(done.wait(), 10)
        finally:
            await worker_side.aclose()
            await caller_side.aclose()

    with caplog.at_level(logging.WARNING, logger="murmur.distributed"):
        await on_asyncio(scenario)
    warnings = [r for r in caplog.records if "consumer_timeout" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per adapter, not once per task
    assert f"{namespace}.tasks.a" in warnings[0].getMessage()
