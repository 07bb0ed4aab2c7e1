"""The local broker servers tests run against, and removing what a test namespace made.

The servers are part of this project's machines (``.ci/run`` starts them): a test that
needs one fails when it is not running, it is never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import pytest
import sniffio

from murmur._bridge import AsyncioBridge
from murmur.distributed._adapter import safe_name

T = TypeVar("T")

REDIS_URL = "redis://127.0.0.1:6379"
NATS_URL = "nats://127.0.0.1:4222"
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/"

URLS = {"redis": REDIS_URL, "nats": NATS_URL, "rabbit": RABBIT_URL}
_PORTS = {"redis": 6379, "nats": 4222, "rabbit": 5672}
_SERVERS = {"redis": "Redis", "nats": "NATS (with JetStream, -js)", "rabbit": "RabbitMQ"}


def require(kind: str) -> str:
    """The local ``kind`` server's URL; fails the test (with how to start it) if it is down."""
    port = _PORTS[kind]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return URLS[kind]
    except OSError as exc:
        pytest.fail(
            f"no {_SERVERS[kind]} server on 127.0.0.1:{port} ({exc}): start the local "
            "servers with .ci/run (it starts Redis, NATS and RabbitMQ when they are down)",
            pytrace=False,
        )


async def on_asyncio(fn: Callable[[], Awaitable[T]]) -> T:
    """Adapters are asyncio-only: run ``fn`` on this loop, or under Trio on a helper."""
    if sniffio.current_async_library() == "asyncio":
        return await fn()
    bridge = AsyncioBridge(name="murmur-test-adapter")
    try:
        return await bridge.run(fn)
    finally:
        await bridge.aclose()


def run_asyncio(make: Callable[[], Awaitable[None]]) -> None:
    """Run an asyncio clean-up from sync code, whatever loop (if any) this thread runs."""
    errors: list[BaseException] = []

    async def main() -> None:
        await make()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="test-broker-cleanup")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def delete_redis_keys(namespace: str, url: str = REDIS_URL) -> None:
    """Delete the namespace's streams (tasks, replies and dead letters)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}.*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def delete_nats_stream(namespace: str, url: str = NATS_URL) -> None:
    """Delete the namespace's JetStream streams (named as ``NatsAdapter.stream`` and
    ``dead_stream``), and with them their consumers."""

    async def delete() -> None:
        import nats
        from nats.js.errors import NotFoundError

        client = await nats.connect(url)
        try:
            for stream in ("tasks", "dead"):
                with contextlib.suppress(NotFoundError):
                    await client.jetstream().delete_stream(f"{safe_name(namespace)}-{stream}")
        finally:
            await client.close()

    run_asyncio(delete)


def delete_rabbit_queues(namespace: str, agents: Iterable[str], url: str = RABBIT_URL) -> None:
    """Delete the namespace's task queues of ``agents`` (named as ``task_channel``; deleting
    a queue that does not exist is a no-op) its dead-letter queue, its registry of agents and
    its control exchange. Reply queues are deleted by their callers as they close, workers'
    control queues go with their
    connections."""

    async def delete() -> None:
        import aio_pika

        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            for agent in agents:
                await channel.queue_delete(f"{namespace}.tasks.{safe_name(agent)}")
            await channel.queue_delete(f"{namespace}.dead")
            await channel.queue_delete(f"{namespace}.agents")  # the callers' registry
            await channel.exchange_delete(f"{namespace}.control")  # the workers' control fanout
        finally:
            await connection.close()

    run_asyncio(delete)


def cleanup(kind: str, namespace: str, agents: Iterable[str]) -> None:
    """Delete what ``namespace`` made on the local ``kind`` server."""
    if kind == "redis":
        delete_redis_keys(namespace)
    elif kind == "nats":
        delete_nats_stream(namespace)
    else:
        delete_rabbit_queues(namespace, agents)


def left_on(kind: str, namespace: str, agents: Iterable[str]) -> list[str]:
    """What ``namespace`` still has on the local ``kind`` server (its channels of
    ``agents``), asked with the broker's own client: empty once it is all deleted."""
    if kind == "redis":
        return _left_on_redis(namespace)
    if kind == "nats":
        return _left_on_nats(namespace)
    return _left_on_rabbit(namespace, agents)


def _left_on_redis(namespace: str) -> list[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        return [key.decode() for key in client.scan_iter(match=f"{namespace}.*")]
    finally:
        client.close()


def _left_on_nats(namespace: str) -> list[str]:
    left: list[str] = []

    async def look() -> None:
        import nats
        from nats.js.errors import NotFoundError

        client = await nats.connect(NATS_URL)
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


def _left_on_rabbit(namespace: str, agents: Iterable[str]) -> list[str]:
    left: list[str] = []
    queues = [
        *(f"{namespace}.tasks.{safe_name(agent)}" for agent in agents),
        f"{namespace}.dead",
        f"{namespace}.agents",
    ]

    async def look() -> None:
        import aio_pika
        from aiormq.exceptions import ChannelNotFoundEntity

        connection = await aio_pika.connect(RABBIT_URL)
        try:
            for name in queues:
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
