"""Results lost on the way back: the caller asks for them again, the worker sends the copy
it kept. No task runs twice for it, and a caller with no deadline never waits forever.

A reply is lost when it is sent while its caller is cut off (core NATS keeps nothing; a
RabbitMQ reply queue is deleted with its connection) or when the broker loses it (a Redis
server that lost its data). The worker's sends are held here, behind thread-safe events
(under Trio an embedded worker runs on its own asyncio loop), so that each result is sent
exactly while its caller cannot hear it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from distributed.brokers import REDIS_URL, cleanup, require
from distributed.proxy import tcp_proxy
from distributed.servers import NatsServer
from murmur import AgentRuntime, TaskSpec
from murmur.distributed import BrokerTransport, Worker, parse_broker_url
from murmur.distributed._adapter import load_adapter
from murmur.distributed._nats import NatsAdapter
from workers import STEP_SECONDS

pytestmark = pytest.mark.anyio

TASKS = 3
LABELS = [f"t{i}" for i in range(TASKS)]


class Runs:
    """The agent of these tests, counting its runs (from whichever thread runs it)."""

    def __init__(self) -> None:
        self.labels: list[str] = []

    def agent(self) -> Any:
        async def shout(text: str) -> str:
            self.labels.append(text)
            return text.upper()

        return shout


class Held:
    """Holds the first send of each result at the worker until ``release`` is set."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.release = threading.Event()
        #: Every result is held / every held result has been sent.
        self.arrived = threading.Event()
        self.sent = threading.Event()
        self.ids: set[str] = set()
        self._sent = 0
        #: The worker's adapter (the one sending results).
        self.adapter: Any = None

    def patch(self, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
        """Hold the worker's first send of each result (``settle``: the result, then its
        task's acknowledgement; a result sent again goes by ``publish_reply``)."""
        adapter_class = load_adapter(parse_broker_url(url))
        original = adapter_class.settle

        async def settle(adapter: Any, address: str, data: bytes, delivery: Any) -> None:
            message = json.loads(data)
            if message["correlation_id"] in self.ids:
                await original(adapter, address, data, delivery)
                return
            self.adapter = adapter
            self.ids.add(message["correlation_id"])
            if len(self.ids) == self.count:
                self.arrived.set()
            await asyncio.to_thread(self.release.wait)
            await original(adapter, address, data, delivery)
            if isinstance(adapter, NatsAdapter):
                await adapter._client.flush()  # the server has had it: routed, or dropped
            self._sent += 1
            if self._sent == self.count:
                self.sent.set()

        monkeypatch.setattr(adapter_class, "settle", settle)


def lose_first_results(monkeypatch: pytest.MonkeyPatch, url: str) -> set[str]:
    """Make the worker's first send of each result vanish on the way (its task is
    acknowledged, as after a send that went out); returns their ids."""
    adapter_class = load_adapter(parse_broker_url(url))
    original = adapter_class.settle
    lost: set[str] = set()

    async def settle(adapter: Any, address: str, data: bytes, delivery: Any) -> None:
        message = json.loads(data)
        if message["correlation_id"] not in lost:
            lost.add(message["correlation_id"])
            await delivery.ack()
            return
        await original(adapter, address, data, delivery)

    monkeypatch.setattr(adapter_class, "settle", settle)
    return lost


@pytest.fixture
def namespace() -> str:
    return f"t-lost-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("kind", ["redis", "nats", "rabbit"])
async def test_a_result_lost_on_the_way_is_sent_again_when_its_caller_asks(
    kind: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = require(kind)
    runs = Runs()
    shout = runs.agent()
    lost = lose_first_results(monkeypatch, url)
    worker = Worker(url, [shout], namespace=namespace, heartbeat_seconds=0)
    # No deadline: only asking again brings the results back.
    transport = BrokerTransport(url, namespace=namespace, resend_every=0.2)
    try:
        async with worker, AgentRuntime(transport=transport) as runtime:
            with anyio.fail_after(STEP_SECONDS):
                results = await runtime.gather(shout, [TaskSpec(input=x) for x in LABELS])
    finally:
        await anyio.to_thread.run_sync(cleanup, kind, namespace, ["shout"])
    assert [result.unwrap() for result in results] == [x.upper() for x in LABELS]
    assert len(lost) == TASKS
    assert sorted(runs.labels) == LABELS  # sent again from the worker's copy, not run again
    assert worker.stats.resent >= TASKS


@pytest.mark.parametrize("kind", ["nats", "rabbit", "redis"])
async def test_results_sent_while_the_caller_was_cut_off_come_again_once_it_reconnects(
    kind: str, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NATS: the caller is cut off, the server restarted, the worker reconnects and sends
    the results to nobody. RabbitMQ: the caller's connection drops (its durable reply
    queue keeps what is sent meanwhile). Redis: the results are stored, and lost with the
    server's data while the caller is cut off. Each time the caller, with no deadline, gets
    every result once it reconnects, and nothing runs twice."""
    server: NatsServer | None = None
    if kind == "nats":
        server = NatsServer(tmp_path / "nats")
        server.start()
        worker_url, upstream = server.url, server.port
    else:
        worker_url = require(kind)
        upstream = {"rabbit": 5672, "redis": 6379}[kind]
    runs = Runs()
    shout = runs.agent()
    held = Held(TASKS)
    held.patch(monkeypatch, worker_url)
    back = threading.Event()  # the worker's NATS connection is back
    if kind == "nats":
        reconnected = NatsAdapter._reconnected

        async def tell(adapter: NatsAdapter) -> None:
            await reconnected(adapter)
            if adapter is held.adapter:
                back.set()

        monkeypatch.setattr(NatsAdapter, "_reconnected", tell)
    results: list[Any] = []
    try:
        async with tcp_proxy(upstream) as proxy:
            caller_url = {
                "nats": proxy.url("nats"),
                "rabbit": proxy.url("amqp", "guest:guest@", "/"),
                "redis": proxy.url("redis"),
            }[kind]
            worker = Worker(worker_url, [shout], namespace=namespace, heartbeat_seconds=0)
            transport = BrokerTransport(caller_url, namespace=namespace)
            async with worker, AgentRuntime(transport=transport) as runtime:

                async def call() -> None:
                    results.extend(await runtime.gather(shout, [TaskSpec(input=x) for x in LABELS]))

                with anyio.fail_after(STEP_SECONDS):
                    async with anyio.create_task_group() as task_group:
                        task_group.start_soon(call)
                        await anyio.to_thread.run_sync(held.arrived.wait, abandon_on_cancel=True)
                        await proxy.cut()
                        if server is not None:
                            await anyio.to_thread.run_sync(server.restart)
                            await anyio.to_thread.run_sync(back.wait, abandon_on_cancel=True)
                        held.release.set()  # sent while the caller cannot hear them
                        await anyio.to_thread.run_sync(held.sent.wait, abandon_on_cancel=True)
                        if kind == "redis":
                            reply_stream = f"{namespace}.reply.{transport.caller_id}"
                            await anyio.to_thread.run_sync(_lose_stream, reply_stream)
                        proxy.restore()
    finally:
        held.release.set()
        if server is not None:
            server.kill()
        else:
            await anyio.to_thread.run_sync(cleanup, kind, namespace, ["shout"])
    assert [result.unwrap() for result in results] == [x.upper() for x in LABELS]
    if kind == "nats":
        # A server killed with SIGKILL may forget the deliveries it made just before (its
        # consumers' state is written behind; seen: delivered again with a count of 1):
        # those tasks run again, at least once as promised; their results come once each.
        assert set(runs.labels) == set(LABELS)
    else:
        assert sorted(runs.labels) == LABELS  # sent again from the worker's copy, not rerun
    if kind != "rabbit":
        assert worker.stats.resent >= TASKS
    # RabbitMQ: the caller's reply queue is durable, so the results sent while it was cut
    # off waited there for it (asked for again or not, each comes once).


def _lose_stream(stream: str) -> None:
    """What a Redis server restarted without its data did to ``stream``."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert client.xlen(stream) >= TASKS  # the results were there
        client.delete(stream)
    finally:
        client.close()


def test_a_worker_keeps_the_results_it_sent_lately_within_its_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from murmur.distributed import _worker

    monkeypatch.setattr(_worker, "SENT_MAX", 3)
    monkeypatch.setattr(_worker, "SENT_MAX_BYTES", 10)
    sent = _worker._Sent()
    for index in range(4):
        sent.add(f"c{index}", "reply.a", b"12")
    assert sent.get("c0", "reply.a") is None  # the oldest out first: at most 3
    assert sent.get("c3", "reply.a") == b"12"
    assert sent.get("c3", "reply.b") is None  # only to the address it went to
    sent.add("big", "reply.a", b"123456789")
    assert sent.get("c3", "reply.a") is None  # 10 bytes in all, at most
    assert sent.get("big", "reply.a") == b"123456789"
    monkeypatch.setattr(_worker, "SENT_TTL", 0.0)
    assert sent.get("big", "reply.a") is None  # kept SENT_TTL seconds, at most
