"""Review: delivery keeps going through what a broker or an operator does to it.

* Redis: a consumer group lost while workers run (its stream deleted, a server restarted
  without persistence) is created again and the workers go on serving.
* Redis: a worker restarted under the same ``--name`` does not inherit (and keep alive
  for good) the entries its killed predecessor held: they come back.
* The helper that stops an adapter's background loop never swallows the cancellation of
  the task stopping it.
* NATS: one failed "still working on it" signal does not end a task's keep-alive.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from distributed import app
from distributed.brokers import REDIS_URL, cleanup, require
from distributed.contract import HANG, worker_args
from distributed.servers import VolatileRedisServer
from distributed.test_adapters import on_asyncio
from murmur import AgentRuntime, EventType, RuntimeEvent, TaskSpec
from murmur._cancellation import cancel_and_wait
from murmur.distributed._adapter import Delivery
from murmur.distributed._nats import NatsAdapter
from murmur.distributed._transport import BrokerTransport
from murmur.distributed._url import parse_broker_url
from murmur.distributed._worker import Worker
from support import Recorder
from workers import WorkerProcess

pytestmark = pytest.mark.anyio

#: Seconds a dead worker's tasks wait, as the same-name workers are told.
REDELIVER_AFTER = 1.0


@pytest.fixture
def namespace() -> str:
    return f"review-delivery-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_url(namespace: str) -> Iterator[str]:
    url = require("redis")
    yield url
    cleanup("redis", namespace, [])


def caller(url: str, namespace: str, events: Any = None) -> AgentRuntime:
    return AgentRuntime(
        transport=BrokerTransport(url, namespace=namespace), event_emitter=events or Recorder()
    )


def shout_worker(url: str, namespace: str) -> Worker:
    return Worker(
        url,
        [app.shout],
        namespace=namespace,
        event_emitter=Recorder(),
        heartbeat_seconds=0,
        grace_seconds=5,
    )


def lost_group_lines(caplog: pytest.LogCaptureFixture, stream: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if "was gone" in record.getMessage() and stream in record.getMessage()
    ]


# -- Redis: a lost consumer group ------------------------------------------------------


async def test_a_redis_worker_serves_again_after_its_task_stream_is_deleted(
    redis_url: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="murmur.distributed")
    stream = f"{namespace}.tasks.shout"

    def delete_stream() -> None:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            assert client.delete(stream) == 1  # the stream and, with it, the group
        finally:
            client.close()

    async with shout_worker(redis_url, namespace), caller(redis_url, namespace) as runtime:
        with anyio.fail_after(HANG):
            before = await runtime.run(app.shout, TaskSpec(input="before"))
        await anyio.to_thread.run_sync(delete_stream)
        with anyio.fail_after(HANG):
            after = await runtime.gather(app.shout, [TaskSpec(input=f"a{i}") for i in range(5)])
    assert before.unwrap() == "BEFORE"
    assert [result.unwrap() for result in after] == [f"A{i}" for i in range(5)]
    assert len(lost_group_lines(caplog, stream)) == 1, caplog.text


async def test_a_redis_worker_serves_again_after_a_restart_without_persistence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="murmur.distributed")
    namespace = f"review-delivery-{uuid.uuid4().hex[:10]}"
    server = VolatileRedisServer(tmp_path / "data")
    server.start()
    try:
        async with (
            shout_worker(server.url, namespace),
            caller(server.url, namespace) as runtime,
        ):
            with anyio.fail_after(HANG):
                before = await runtime.run(app.shout, TaskSpec(input="before"))
            await anyio.to_thread.run_sync(server.restart)  # every stream and group gone
            with anyio.fail_after(HANG):
                after = await runtime.run(app.shout, TaskSpec(input="after"))
    finally:
        server.kill()
    assert before.unwrap() == "BEFORE"
    assert after.unwrap() == "AFTER"
    assert len(lost_group_lines(caplog, f"{namespace}.tasks.shout")) == 1, caplog.text


# -- Redis: a worker restarted under the same name -------------------------------------


class Running(Recorder):
    """Records events; ``all_running`` is set once ``count`` tasks have started."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.all_running = anyio.Event()

    async def emit(self, event: RuntimeEvent) -> None:
        await super().emit(event)
        if len(self.of(EventType.CHILD_SPAWNED)) >= self.count:
            self.all_running.set()


async def test_a_redis_worker_restarted_under_the_same_name_gets_its_predecessors_tasks_back(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    """The new worker starts while the old one still runs, so the outcome does not hang
    on how fast it starts: sharing one consumer name, the new one's touches would keep
    the dead one's entries from ever going idle, and its reads never return them."""
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    labels = [f"t{i}" for i in range(4)]  # fewer than a worker's slots: all taken at once
    tasks = [
        TaskSpec(input=app.Gated(label=label, gate=str(gate), runs=str(runs))) for label in labels
    ]
    args = [
        *worker_args(redis_url, namespace),
        *("--name", "same", "--redeliver-after", str(REDELIVER_AFTER)),
    ]
    events = Running(len(tasks))
    results: list[Any] = []
    old = WorkerProcess(*args)
    new: WorkerProcess | None = None
    try:
        await old.wait_for("worker.started")
        with anyio.fail_after(HANG):
            async with (
                caller(redis_url, namespace, events) as runtime,
                anyio.create_task_group() as tg,
            ):

                async def gather() -> None:
                    results.extend(await runtime.gather(app.gated, tasks))

                tg.start_soon(gather)
                await events.all_running.wait()  # the old worker holds every task
                new = WorkerProcess(*args)
                await new.wait_for("worker.started")
                old.proc.kill()  # SIGKILL: it settles nothing
                await old.exit_code()
                gate.touch()
        assert new.stop() == 0, new.output()
    finally:
        old.close()
        if new is not None:
            new.close()
    assert [result.unwrap() for result in results] == labels  # each once, in order
    ran: dict[str, set[str]] = {}
    for line in runs.read_text().splitlines():
        label, pid = line.split()
        ran.setdefault(label, set()).add(pid)
    assert ran == {label: {str(old.proc.pid), str(new.proc.pid)} for label in labels}
    # Two consumers in the group, each named after the worker, each its own.
    client = redis.Redis.from_url(REDIS_URL)
    try:
        stream = f"{namespace}.tasks.gated"
        consumers = {
            c["name"].decode() for c in client.xinfo_consumers(stream, f"{namespace}-workers")
        }
    finally:
        client.close()
    assert len(consumers) == 2
    assert all(name.startswith("same-") for name in consumers), consumers


# -- stopping a background loop --------------------------------------------------------


async def test_cancel_and_wait_never_swallows_the_awaiters_cancellation() -> None:
    """The stopper is cancelled at the very moment the loop it stops ends (as redis-py's
    reply arrives with a cancellation): the stopper's cancellation still propagates."""

    async def scenario() -> tuple[bool, bool, bool]:
        reply = asyncio.Event()
        cleaning = asyncio.Event()
        past_the_wait = asyncio.Event()

        async def loop() -> None:  # a background loop finishing one call when cancelled
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cleaning.set()
                await reply.wait()
                raise

        async def stopper(task: asyncio.Task[None]) -> None:
            await cancel_and_wait(task)
            past_the_wait.set()

        task = asyncio.get_running_loop().create_task(loop())
        await asyncio.sleep(0)  # the loop is running
        stopping = asyncio.get_running_loop().create_task(stopper(task))
        await cleaning.wait()  # the stopper waits for the loop to end
        reply.set()  # the loop ends...
        stopping.cancel()  # ...as the stopper is cancelled
        await asyncio.wait([stopping, task])
        return stopping.cancelled(), past_the_wait.is_set(), task.cancelled()

    stopper_cancelled, went_on, loop_cancelled = await on_asyncio(scenario)
    assert stopper_cancelled
    assert not went_on
    assert loop_cancelled


async def test_cancel_and_wait_raises_the_loops_own_failure() -> None:
    async def scenario() -> None:
        async def loop() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                raise RuntimeError("the loop broke")

        task = asyncio.get_running_loop().create_task(loop())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="the loop broke"):
            await cancel_and_wait(task)
        await cancel_and_wait(None)  # nothing to stop

    await on_asyncio(scenario)


# -- NATS: keep-alive through a failed signal ------------------------------------------


async def test_a_nats_keep_alive_survives_a_failed_progress_signal(
    namespace: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The first "still working" signal fails; the next ones are sent, and the task is
    not delivered again although it is held past the ack wait."""
    caplog.set_level(logging.WARNING, logger="murmur.distributed")
    url = parse_broker_url(require("nats"))
    redeliver_after = 3.0  # signals a second apart: one missed still beats the ack wait
    signals = 4  # more than the ack wait's worth

    async def scenario() -> tuple[int, int]:
        adapter = NatsAdapter(url, namespace=namespace, redeliver_after=redeliver_after)
        taken: list[Delivery] = []
        calls = 0
        enough = asyncio.Event()

        async def take(data: bytes, delivery: Delivery) -> None:
            taken.append(delivery)
            if len(taken) > 1:
                enough.set()  # delivered again while held: the failure this test looks for
                return
            message = delivery._message  # type: ignore[attr-defined]
            in_progress = message.in_progress

            async def flaky() -> None:
                nonlocal calls
                calls += 1
                if calls >= signals:
                    enough.set()
                if calls == 1:
                    raise ConnectionError("a connection blip")
                await in_progress()

            monkeypatch.setattr(message, "in_progress", flaky)

        try:
            await adapter.connect()
            await adapter.publish_task("shout", b"a long one")
            await adapter.consume(["shout"], take, prefetch=1, consumer="k")
            await asyncio.wait_for(enough.wait(), HANG)
            await taken[0].ack()
            return len(taken), calls
        finally:
            await adapter.aclose()

    try:
        deliveries, calls = await on_asyncio(scenario)
    finally:
        cleanup("nats", namespace, [])
    assert deliveries == 1  # held past the ack wait, never delivered again
    assert calls >= signals  # the signals went on after the failed one
    failed = [r for r in caplog.records if "could not report progress" in r.getMessage()]
    assert len(failed) == 1, caplog.text
