"""Broker outages: the broker taken down and started again mid-gather.

Each test runs its own ``redis-server`` (append-only file, fsynced on every write),
``nats-server`` (JetStream on disk) or RabbitMQ node (one per module: it takes seconds to
boot) on a free port (``servers``), a real worker process, and a caller in this process;
the server is taken down (Redis and NATS killed with SIGKILL, RabbitMQ stopped: see
``RabbitServer.take_down``) while tasks are in flight and queued, the in-flight tasks
finish while it is gone, and it is started again on the same port with the same data.
Every slot gets a result: the result, or (NATS, whose replies are not stored) a clear
error by the attempt's deadline. Never a hang.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from distributed.outage_app import Gated, gated
from distributed.servers import BrokerServer, NatsServer, RabbitServer, RedisServer
from murmur import (
    AgentRuntime,
    AgentTimeoutError,
    BrokerUnavailableError,
    RuntimeOptions,
    TaskSpec,
)
from murmur.distributed import BrokerTransport
from workers import STEP_SECONDS, WorkerProcess

pytestmark = pytest.mark.anyio

APP = "distributed.outage_app"
SLOTS = 6


@pytest.fixture(scope="module")
def rabbit_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitServer]:
    """A RabbitMQ node of this module's own (one boot takes seconds), killed afterwards."""
    node = RabbitServer(tmp_path_factory.mktemp("rabbit") / "data")
    node.start()
    try:
        yield node
    finally:
        node.kill()


@pytest.fixture(params=["redis", "nats", "rabbit"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerServer]:
    """A broker server of this test's own (RabbitMQ: this module's, running), killed
    afterwards (RabbitMQ: at the module's end)."""
    if request.param == "rabbit":
        node: RabbitServer = request.getfixturevalue("rabbit_node")
        if node.proc is None:  # an earlier test left it killed
            node.start()
        yield node
        return
    kind = RedisServer if request.param == "redis" else NatsServer
    broker = kind(tmp_path / "data")
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


def tasks(tmp_path: Path, count: int) -> list[TaskSpec[Gated]]:
    runs = tmp_path / "runs"
    runs.mkdir(exist_ok=True)
    gate = str(tmp_path / "gate")
    return [TaskSpec(input=Gated(gate=gate, label=f"t{i}", runs=str(runs))) for i in range(count)]


async def test_a_broker_restarted_mid_gather(server: BrokerServer, tmp_path: Path) -> None:
    namespace = f"t-outage-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(
        *("--app", APP, "--broker", server.url, "--namespace", namespace),
        *("--log-format", "json", "--concurrency", "2", "--heartbeat", "0.05"),
    )
    try:
        await worker.wait_for("worker.started")
        transport = BrokerTransport(server.url, namespace=namespace, reply_grace=1)
        results = []
        # Long enough for the tasks to come back after the restart (a RabbitMQ node takes
        # seconds to stop and start again).
        timeout = 30 if isinstance(server, RabbitServer) else 5
        async with AgentRuntime(
            transport=transport, options=RuntimeOptions(timeout_seconds=timeout)
        ) as runtime:

            async def call() -> None:
                results.extend(await runtime.gather(gated, tasks(tmp_path, SLOTS)))

            with anyio.fail_after(timeout + STEP_SECONDS):
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(call)
                    # Two in flight on the worker, four queued on the broker.
                    await worker.wait_for("worker.heartbeat", in_flight=2)
                    await anyio.to_thread.run_sync(server.take_down)
                    (tmp_path / "gate").touch()  # they finish while the broker is gone
                    lost = await worker.wait_for("log", level="warning")
                    assert "unreachable" in lost["message"]
                    await anyio.to_thread.run_sync(server.start)
        assert len(results) == SLOTS  # every slot has a result
        for index, result in enumerate(results):
            if result.error is None:
                assert result.output == f"t{index}@{worker.proc.pid}"
            else:
                # Only NATS may lose a reply (core NATS, sent while its caller reconnects).
                assert isinstance(server, NatsServer), result.error
                assert isinstance(result.error, AgentTimeoutError)
        back = await worker.wait_for("log", level="info")
        assert "reachable again" in back["message"]
        # The worker kept serving: one more task after the outage.
        async with AgentRuntime(
            transport=BrokerTransport(server.url, namespace=namespace),
            options=RuntimeOptions(timeout_seconds=10),
        ) as runtime:
            after = await runtime.run(gated, tasks(tmp_path, 1)[0])
        assert after.output == f"t0@{worker.proc.pid}"
        assert worker.stop() == 0
    finally:
        worker.close()


async def test_a_task_sent_while_the_broker_is_gone_fails_by_its_deadline(
    server: BrokerServer, tmp_path: Path
) -> None:
    namespace = f"t-outage-{uuid.uuid4().hex[:8]}"
    transport = BrokerTransport(server.url, namespace=namespace, reply_grace=0)
    async with AgentRuntime(
        transport=transport, options=RuntimeOptions(timeout_seconds=0.5)
    ) as runtime:
        # Connected (no worker serves it: it times out).
        first = await runtime.run(gated, tasks(tmp_path, 1)[0])
        assert isinstance(first.error, AgentTimeoutError)
        await anyio.to_thread.run_sync(server.take_down)
        with anyio.fail_after(STEP_SECONDS):
            result = await runtime.run(gated, tasks(tmp_path, 1)[0])
    assert isinstance(result.error, BrokerUnavailableError)
    assert "could not be sent before its deadline" in str(result.error)
