"""``BrokerAdapter.delete_namespace``: a namespace made to be thrown away leaves nothing.

Against the local Redis, NATS and RabbitMQ servers: a worker and a caller make the
namespace's channels (tasks run, a dead letter kept), then the adapter deletes them, and
the broker is asked, with its own client, whether anything of the namespace is left.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio
import pytest

from distributed.brokers import cleanup, on_asyncio, require, run_asyncio
from murmur import AgentRuntime, TaskSpec
from murmur.distributed._adapter import BrokerAdapter, DeadLetter, load_adapter
from murmur.distributed._transport import BrokerTransport
from murmur.distributed._url import parse_broker_url
from murmur.distributed._worker import Worker
from murmur.errors import NotAvailableError

pytestmark = pytest.mark.anyio


async def echo(text: str) -> str:
    return text


def adapter_for(url: str, namespace: str) -> BrokerAdapter:
    parsed = parse_broker_url(url)
    return load_adapter(parsed)(parsed, namespace=namespace)


def left_on_redis(url: str, namespace: str) -> list[str]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return [key.decode() for key in client.scan_iter(match=f"{namespace}.*")]
    finally:
        client.close()


def left_on_nats(url: str, namespace: str) -> list[str]:
    from murmur.distributed._adapter import safe_name

    left: list[str] = []

    async def look() -> None:
        import nats
        from nats.js.errors import NotFoundError

        client = await nats.connect(url)
        try:
            for stream in (f"{safe_name(namespace)}-tasks", f"{safe_name(namespace)}-dead"):
                try:
                    await client.jetstream().stream_info(stream)
                except NotFoundError:
                    continue
                left.append(stream)
        finally:
            await client.close()

    run_asyncio(look)
    return left


def left_on_rabbit(url: str, namespace: str) -> list[str]:
    left: list[str] = []

    async def look() -> None:
        import aio_pika
        from aiormq.exceptions import ChannelNotFoundEntity

        connection = await aio_pika.connect(url)
        try:
            for name in (f"{namespace}.tasks.echo", f"{namespace}.dead", f"{namespace}.agents"):
                channel = await connection.channel()  # a failed passive declare closes it
                try:
                    await channel.declare_queue(name, passive=True)
                except ChannelNotFoundEntity:
                    continue
                left.append(name)
            channel = await connection.channel()
            try:
                await channel.get_exchange(f"{namespace}.control", ensure=True)
            except ChannelNotFoundEntity:
                pass
            else:
                left.append(f"{namespace}.control")
        finally:
            await connection.close()

    run_asyncio(look)
    return left


LEFT = {"redis": left_on_redis, "nats": left_on_nats, "rabbit": left_on_rabbit}


@pytest.mark.parametrize("kind", ["redis", "nats", "rabbit"])
async def test_deleting_a_namespace_leaves_nothing_of_it(kind: str) -> None:
    url = require(kind)
    namespace = f"t-delete-{uuid.uuid4().hex[:10]}"
    try:
        async with (
            Worker(url, [echo], heartbeat_seconds=0, namespace=namespace),
            AgentRuntime(transport=BrokerTransport(url, namespace=namespace)) as runtime,
        ):
            with anyio.fail_after(20):
                results = await runtime.gather(echo, [TaskSpec(input=f"{i}") for i in range(5)])
        assert [result.output for result in results] == ["0", "1", "2", "3", "4"]
        left_before = LEFT[kind](url, namespace)
        assert left_before, "the run made nothing to delete"

        async def delete() -> None:
            adapter = adapter_for(url, namespace)
            await adapter.connect()
            try:
                letter = DeadLetter(
                    data=b"{}",
                    reason="malformed",
                    detail="a test's",
                    agent="echo",
                    worker="test",
                    timestamp=time.time(),
                    deliveries=1,
                )
                await adapter.publish_dead_letter(letter)
                await adapter.delete_namespace(["echo"])
            finally:
                await adapter.aclose()

        with anyio.fail_after(20):
            await on_asyncio(delete)
        assert LEFT[kind](url, namespace) == []
    finally:
        cleanup(kind, namespace, ["echo"])


async def test_a_memory_broker_cannot_delete_a_namespace() -> None:
    adapter: Any = adapter_for("memory://", "t-delete")
    with pytest.raises(NotAvailableError, match="cannot delete a namespace"):
        await adapter.delete_namespace(["echo"])
