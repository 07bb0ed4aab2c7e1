"""At-least-once delivery on the real brokers: a killed worker's tasks come back, once each,
and a long task on a live worker is never handed to another.

Workers run with a short ``redeliver_after`` so a dead worker's tasks come back within the
test's bounds (RabbitMQ needs none: it requeues them when the worker's connection drops).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from distributed import app
from distributed.brokers import cleanup, require
from distributed.contract import HANG, worker_args
from distributed.test_adapters import on_asyncio
from murmur import AgentRuntime, EventType, InvalidValueError, RuntimeEvent, TaskSpec
from murmur.distributed import AgentRegistry
from murmur.distributed._adapter import Delivery
from murmur.distributed._redis import RedisAdapter
from murmur.distributed._transport import BrokerTransport
from murmur.distributed._url import parse_broker_url
from murmur.distributed._worker import Worker
from support import Recorder
from workers import WorkerProcess

#: Seconds a dead worker's tasks wait (Redis, NATS), as the workers here are told.
REDELIVER_AFTER = 1.0

pytestmark = pytest.mark.anyio


@pytest.fixture
def namespace() -> str:
    return f"redelivery-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def broker(request: pytest.FixtureRequest, namespace: str) -> Iterator[str]:
    """The local server of the test's broker kind (its parameter); what the test's
    namespace made there is deleted after it."""
    kind: str = request.param
    url = require(kind)
    yield url
    cleanup(kind, namespace, AgentRegistry.from_module(app).names())


def caller(url: str, namespace: str, events: Recorder) -> AgentRuntime:
    return AgentRuntime(transport=BrokerTransport(url, namespace=namespace), event_emitter=events)


class FirstRun(Recorder):
    """Records events; ``running`` is set by the first task event from a worker."""

    def __init__(self) -> None:
        super().__init__()
        self.running = anyio.Event()
        self.first: RuntimeEvent | None = None

    async def emit(self, event: RuntimeEvent) -> None:
        await super().emit(event)
        if event.type is EventType.CHILD_SPAWNED and self.first is None:
            self.first = event
            self.running.set()


@pytest.mark.parametrize("broker", ["redis", "nats", "rabbit"], indirect=True)
async def test_a_killed_workers_tasks_come_back_exactly_once_in_order(
    broker: str, namespace: str, tmp_path: Path
) -> None:
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    tasks = [
        TaskSpec(input=app.Gated(label=f"t{i}", gate=str(gate), runs=str(runs))) for i in range(24)
    ]
    args = [*worker_args(broker, namespace), "--redeliver-after", str(REDELIVER_AFTER)]
    workers = [WorkerProcess(*args), WorkerProcess(*args)]
    events = FirstRun()
    results: list[Any] = []
    done = anyio.Event()
    try:
        names = [(await worker.wait_for("worker.started"))["worker"] for worker in workers]

        async def gather(runtime: AgentRuntime) -> None:
            results.extend(await runtime.gather(app.gated, tasks))
            done.set()

        async with caller(broker, namespace, events) as runtime, anyio.create_task_group() as tg:
            tg.start_soon(gather, runtime)
            with anyio.fail_after(HANG):
                await events.running.wait()
            assert events.first is not None
            victim = workers[names.index(events.first.data["worker"])]
            victim.proc.kill()  # SIGKILL: it settles nothing, says nothing
            await victim.exit_code()
            gate.touch()
            with anyio.fail_after(HANG):
                await done.wait()
        survivor = next(worker for worker in workers if worker is not victim)
        assert survivor.stop() == 0, survivor.output()
    finally:
        for worker in workers:
            worker.close()
    assert [r.unwrap() for r in results] == [f"t{i}" for i in range(24)]
    assert [r.task_id for r in results] == [t.task_id for t in tasks]
    ran: defaultdict[str, set[str]] = defaultdict(set)
    for line in runs.read_text().splitlines():
        label, pid = line.split()
        ran[label].add(pid)
    # The task the victim was running when it died ran again on the survivor.
    assert len(ran[events.first.data["label"]]) == 2


@asynccontextmanager
async def two_workers(url: str, namespace: str) -> AsyncIterator[None]:
    """Two workers in this process: either could take a task the other let go idle."""
    async with AsyncExitStack() as stack:
        for _ in range(2):
            worker = Worker(
                url,
                AgentRegistry.from_module(app),
                concurrency=2,
                namespace=namespace,
                event_emitter=Recorder(),
                heartbeat_seconds=0,
                grace_seconds=5,
                redeliver_after=REDELIVER_AFTER,
            )
            await stack.enter_async_context(worker)
        yield


@pytest.mark.parametrize("broker", ["redis", "nats"], indirect=True)
async def test_a_task_running_three_times_the_redelivery_time_runs_once(
    broker: str, namespace: str
) -> None:
    task = TaskSpec(input=3 * REDELIVER_AFTER)
    with anyio.fail_after(HANG):
        async with two_workers(broker, namespace), caller(broker, namespace, Recorder()) as rt:
            result = await rt.run(app.lengthy, task)
    assert result.unwrap() == 1
    assert app.lengthy_runs[task.task_id] == 1


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
async def test_a_nacked_redis_task_goes_to_the_next_claim_with_its_delivery_count(
    broker: str, namespace: str
) -> None:
    url = parse_broker_url(broker)

    async def taker(adapter: RedisAdapter, name: str) -> asyncio.Queue[tuple[bytes, Delivery]]:
        taken: asyncio.Queue[tuple[bytes, Delivery]] = asyncio.Queue()

        async def take(data: bytes, delivery: Delivery) -> None:
            await taken.put((data, delivery))

        await adapter.consume(["shout"], take, prefetch=1, consumer=name)
        return taken

    async def scenario() -> list[tuple[bytes, int]]:
        # The default redeliver_after (30 s): only the nack makes the task claimable now.
        first, second = (
            RedisAdapter(url, namespace=namespace),
            RedisAdapter(url, namespace=namespace),
        )
        try:
            await first.connect()
            await second.connect()
            await first.publish_task("shout", b"once more")
            data, delivery = await asyncio.wait_for((await taker(first, "a")).get(), HANG)
            seen = [(data, delivery.deliveries)]
            await first.stop_consuming()  # as a stopping worker does before it lets go
            again = await taker(second, "b")
            await delivery.nack()
            data, delivery = await asyncio.wait_for(again.get(), HANG)
            seen.append((data, delivery.deliveries))
            await delivery.ack()
            return seen
        finally:
            await first.aclose()
            await second.aclose()

    assert await on_asyncio(scenario) == [(b"once more", 1), (b"once more", 2)]


@pytest.mark.parametrize("value", [0, -1.0, True, "30"])
async def test_redeliver_after_must_be_a_positive_number(value: Any) -> None:
    with pytest.raises(InvalidValueError, match="redeliver_after must be a number > 0"):
        Worker("memory://", [app.shout], redeliver_after=value)
