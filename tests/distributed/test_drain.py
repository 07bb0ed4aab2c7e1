"""SIGTERM during a batch (Redis, NATS and RabbitMQ, two worker processes): the signalled
worker finishes its in-flight tasks and sends their results, the queued ones go to the
other worker, it exits 0, and every task runs and answers exactly once."""

from __future__ import annotations

import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from distributed import outage_app
from distributed.brokers import cleanup, require
from distributed.outage_app import Gated, gated
from murmur import AgentRuntime, RuntimeOptions, TaskSpec
from murmur.distributed import AgentRegistry, BrokerTransport
from workers import STEP_SECONDS, WorkerProcess

pytestmark = pytest.mark.anyio

APP = "distributed.outage_app"
SLOTS = 6


@pytest.fixture
def namespace() -> str:
    return f"t-drain-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def broker(request: pytest.FixtureRequest, namespace: str) -> Iterator[str]:
    kind: str = request.param
    url = require(kind)
    yield url
    cleanup(kind, namespace, AgentRegistry.from_module(outage_app).names())


@pytest.mark.parametrize("broker", ["redis", "nats", "rabbit"], indirect=True)
async def test_sigterm_during_a_batch(broker: str, namespace: str, tmp_path: Path) -> None:
    url = broker
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    runs.mkdir()
    specs = [
        TaskSpec(input=Gated(gate=str(gate), label=f"t{i}", runs=str(runs))) for i in range(SLOTS)
    ]

    def start(name: str) -> WorkerProcess:
        return WorkerProcess(
            *("--app", APP, "--broker", url, "--namespace", namespace, "--name", name),
            *("--log-format", "json", "--concurrency", "2", "--heartbeat", "0.05"),
        )

    first = start("first")
    second: WorkerProcess | None = None
    try:
        await first.wait_for("worker.started")
        results = []
        async with AgentRuntime(
            transport=BrokerTransport(url, namespace=namespace),
            options=RuntimeOptions(timeout_seconds=30),
        ) as runtime:

            async def call() -> None:
                results.extend(await runtime.gather(gated, specs))

            with anyio.fail_after(STEP_SECONDS):
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(call)
                    await first.wait_for("worker.heartbeat", in_flight=2)
                    first.signal(signal.SIGTERM)
                    requested = await first.wait_for("worker.stop_requested")
                    assert (requested["mode"], requested["in_flight"]) == ("drain", 2)
                    second = start("second")
                    await second.wait_for("worker.started")
                    gate.touch()
                    assert await first.exit_code() == 0
        stopped = await first.wait_for("worker.stopped")
        assert (stopped["processed"], stopped["returned"], stopped["in_flight"]) == (2, 0, 0)
        assert second is not None
        ran = Counter(path.name.split(".")[:2][0] for path in runs.iterdir())
        assert ran == Counter({f"t{i}": 1 for i in range(SLOTS)})  # each ran exactly once
        pids = {first.proc.pid: "first", second.proc.pid: "second"}
        by = Counter(pids[int(result.unwrap().split("@")[1])] for result in results)
        assert by == Counter(first=2, second=SLOTS - 2)
        assert [r.unwrap().split("@")[0] for r in results] == [f"t{i}" for i in range(SLOTS)]
        assert second.stop() == 0
    finally:
        first.close()
        if second is not None:
            second.close()
