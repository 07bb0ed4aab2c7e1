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

from distributed.brokers import cleanup, left_on, on_asyncio, require
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
        left_before = left_on(kind, namespace, ["echo"])
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
        assert left_on(kind, namespace, ["echo"]) == []
    finally:
        cleanup(kind, namespace, ["echo"])


async def test_a_memory_broker_cannot_delete_a_namespace() -> None:
    adapter: Any = adapter_for("memory://", "t-delete")
    with pytest.raises(NotAvailableError, match="cannot delete a namespace"):
        await adapter.delete_namespace(["echo"])
