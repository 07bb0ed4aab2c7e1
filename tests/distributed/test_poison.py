"""A poison input: a task whose agent ends its worker process (``os._exit``, a segfault) runs
at most ``--max-deliveries`` times, then is dead-lettered and its caller gets
``DeadLetteredError``; it does not take the fleet down one worker at a time forever.

A small supervisor in the test starts a new worker whenever the last one died, as a
process supervisor (systemd, Kubernetes) would.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from distributed import poison_app
from distributed.brokers import cleanup, require
from murmur import AgentRuntime, DeadLetteredError, RuntimeOptions, TaskSpec
from murmur.distributed import BrokerTransport
from workers import WorkerProcess

pytestmark = pytest.mark.anyio

MAX_DELIVERIES = 2


@pytest.fixture
def namespace() -> str:
    return f"poison-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def broker(request: pytest.FixtureRequest, namespace: str) -> Iterator[str]:
    kind: str = request.param
    url = require(kind)
    yield url
    cleanup(kind, namespace, ["crash"])


@pytest.mark.parametrize("broker", ["redis", "nats", "rabbit"], indirect=True)
async def test_a_task_that_kills_its_workers_is_dead_lettered_after_its_delivery_limit(
    broker: str, namespace: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    args = [
        "--app",
        "tests.distributed.poison_app",
        "--broker",
        broker,
        "--namespace",
        namespace,
        "--max-deliveries",
        str(MAX_DELIVERIES),
        "--redeliver-after",
        "1",
        "--log-format",
        "json",
    ]
    started: list[WorkerProcess] = []
    results: list[Any] = []
    options = RuntimeOptions(timeout_seconds=60)
    transport = BrokerTransport(broker, namespace=namespace)
    async with AgentRuntime(transport=transport, options=options) as runtime:

        async def supervise() -> None:
            while True:  # one live worker at a time, started again when it dies
                worker = WorkerProcess(*args)
                started.append(worker)
                await worker.wait_for("worker.started")
                await anyio.to_thread.run_sync(worker.proc.wait, abandon_on_cancel=True)

        try:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(supervise)
                    results.append(await runtime.run(poison_app.crash, TaskSpec(input=str(runs))))
                    tg.cancel_scope.cancel()
        finally:
            codes = [worker.stop() for worker in started]
    (result,) = results
    assert isinstance(result.error, DeadLetteredError), result.error
    assert "delivery-limit" in str(result.error)
    # It ran (and took a worker down) exactly as often as the limit allows; the worker that
    # received it once more set it aside and went on serving.
    assert len(runs.read_text().splitlines()) == MAX_DELIVERIES
    assert codes[:MAX_DELIVERIES] == [1] * MAX_DELIVERIES
    assert codes[-1] == 0
