"""Dead letters on every broker: what a worker sets aside instead of running, and
``murmur dlq list`` / ``murmur dlq replay``.

On Redis, NATS and RabbitMQ the worker is a real ``murmur worker start`` process and the
``murmur dlq`` commands real processes; ``memory://`` and Kafka (``in_memory_kafka()``)
are reachable only from this process, so there the worker is an in-process ``Worker`` and
the commands run in a thread. The test's own broker side (raw task messages, a caller's
reply channel, a consumer that puts a task back) goes through an adapter, on asyncio (a
helper loop under Trio). Each test uses its own namespace and removes what it made, its
dead letters included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import anyio
import pytest
import sniffio
from typer.testing import CliRunner

from distributed import app
from distributed.brokers import cleanup, require
from distributed.contract import worker_args
from murmur import AgentResult, DeadLetteredError, InvalidValueError, TaskSpec
from murmur._bridge import AsyncioBridge
from murmur._envelope import TaskEnvelope
from murmur.cli import app as cli
from murmur.distributed import AgentRegistry
from murmur.distributed._adapter import (
    BrokerAdapter,
    DeadLetter,
    Delivery,
    load_adapter,
    safe_name,
    unsafe_name,
)
from murmur.distributed._kafka import in_memory_kafka
from murmur.distributed._url import parse_broker_url
from murmur.distributed._wire import ResultMessage, TaskMessage, decode, encode
from murmur.distributed._worker import Worker
from support import Recorder
from workers import REPO, WorkerProcess, command_env

pytestmark = pytest.mark.anyio

T = TypeVar("T")
HANG = 20.0
AGENT = "shout"


@dataclass
class Broker:
    kind: str
    url: str
    namespace: str = field(default_factory=lambda: f"dlq-{uuid.uuid4().hex[:10]}")

    @property
    def in_process(self) -> bool:
        return self.kind in {"memory", "kafka"}

    def adapter(self) -> BrokerAdapter:
        url = parse_broker_url(self.url)
        return load_adapter(url)(url, namespace=self.namespace)

    @asynccontextmanager
    async def worker(self) -> AsyncIterator[str]:
        """A worker serving the test app with a delivery limit of 1; yields its name."""
        if self.in_process:
            worker = Worker(
                self.url,
                AgentRegistry.from_module(app),
                concurrency=4,
                namespace=self.namespace,
                event_emitter=Recorder(),
                heartbeat_seconds=0,
                grace_seconds=5,
                max_deliveries=1,
            )
            async with worker:
                yield worker.name
            return
        process = WorkerProcess(*worker_args(self.url, self.namespace), "--max-deliveries", "1")
        try:
            started = await process.wait_for("worker.started")
            yield started["worker"]
        finally:
            code = await anyio.to_thread.run_sync(process.stop)
        assert code == 0, process.output()

    async def dlq(self, *args: str) -> tuple[int, str, str]:
        """``murmur dlq *args`` on this broker: exit code, stdout, stderr."""
        argv = ["dlq", *args, "--broker", self.url, "--namespace", self.namespace]
        if self.in_process:  # only this process reaches these brokers

            def invoke() -> tuple[int, str, str]:
                result = CliRunner().invoke(cli, argv, env={"COLUMNS": "100"})
                return result.exit_code, result.stdout, result.stderr

            return await anyio.to_thread.run_sync(invoke)
        done = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, "-m", "murmur", *argv],
                cwd=REPO,
                env=command_env(),
                capture_output=True,
                text=True,
                timeout=HANG,
            )
        )
        return done.returncode, done.stdout, done.stderr


@pytest.fixture(params=["memory", "redis", "nats", "rabbit", "kafka"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    kind = request.param
    if kind == "memory":
        yield Broker(kind, f"memory://dlq-{uuid.uuid4().hex[:8]}")
        return
    if kind == "kafka":
        with in_memory_kafka():
            yield Broker(kind, "kafka://kafka.prod:9092")
        return
    spec = Broker(kind, require(kind))
    try:
        yield spec
    finally:
        # The worker process declares a queue for every agent the app serves.
        cleanup(kind, spec.namespace, AgentRegistry.from_module(app).names())


async def on_asyncio(fn: Callable[[], Awaitable[T]]) -> T:
    """Adapters are asyncio-only: run ``fn`` on this loop, or under Trio on a helper."""
    if sniffio.current_async_library() == "asyncio":
        return await fn()
    bridge = AsyncioBridge(name="murmur-test-dlq")
    try:
        return await bridge.run(fn)
    finally:
        await bridge.aclose()


class Caller:
    """A caller's reply channel, opened through an adapter: the results it receives, by
    correlation id."""

    def __init__(self, adapter: BrokerAdapter) -> None:
        self.adapter = adapter
        self.address = ""
        self.results: dict[str, list[Any]] = defaultdict(list)
        self._changed = asyncio.Event()

    async def open(self) -> None:
        await self.adapter.connect()
        self.address = await self.adapter.open_replies(uuid.uuid4().hex[:12], self._on_reply)

    def _on_reply(self, data: bytes) -> None:
        message = decode(data)
        if isinstance(message, ResultMessage):
            self.results[message.correlation_id].append(message.result)
            self._changed.set()

    def task(self, text: str, *, agent: str = AGENT) -> tuple[str, bytes]:
        """A task message for ``agent``: its correlation id and bytes."""
        correlation_id = uuid.uuid4().hex
        envelope = TaskEnvelope(agent=agent, task=TaskSpec(input=text), trace_id="t")
        message = TaskMessage(
            envelope=envelope, reply_to=self.address, correlation_id=correlation_id
        )
        return correlation_id, encode(message)

    async def result(self, correlation_id: str, count: int = 1) -> Any:
        """The ``count``-th result for ``correlation_id`` (waits, bounded)."""
        with anyio.fail_after(HANG):
            while len(self.results[correlation_id]) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.results[correlation_id][count - 1]


async def stored(
    adapter: BrokerAdapter, count: int, *, not_in: frozenset[str] = frozenset()
) -> list[DeadLetter]:
    """The dead letters, once there are ``count`` (none of ids ``not_in``); bounded."""
    with anyio.fail_after(HANG):
        while True:
            letters = [x for x in await adapter.dead_letters(100) if x.id not in not_in]
            if len(letters) >= count:
                return letters
            await anyio.sleep(0.05)  # polling the store: there is nothing to wait on


async def test_unreadable_messages_are_dead_lettered_and_the_worker_keeps_serving(
    broker: Broker,
) -> None:
    async def scenario() -> None:
        caller = Caller(broker.adapter())
        try:
            await caller.open()
            malformed = b'{"not json'
            version_id, good = caller.task("v")
            newer = json.loads(good)
            newer["version"] = 99
            unknown_version = json.dumps(newer).encode()
            foreign_id, foreign = caller.task("f", agent="registered_elsewhere")
            stray = encode(
                ResultMessage(result=AgentResult(task_id="x", agent=AGENT), correlation_id="c")
            )
            for data in (malformed, unknown_version, foreign, stray):
                await caller.adapter.publish_task(AGENT, data)
            async with broker.worker() as worker:
                # The callers of what can be tied to one get an error result.
                for correlation_id, reason in (
                    (version_id, "unknown-version"),
                    (foreign_id, "unknown-agent"),
                ):
                    result = await caller.result(correlation_id)
                    assert isinstance(result.error, DeadLetteredError)
                    assert reason in str(result.error)
                assert (await caller.result(foreign_id)).agent == "registered_elsewhere"
                # The worker goes on serving.
                ok_id, ok = caller.task("still here")
                await caller.adapter.publish_task(AGENT, ok)
                assert (await caller.result(ok_id)).unwrap() == "STILL HERE"

                letters = await stored(caller.adapter, 4)
                by_reason = {letter.reason: letter for letter in letters}
                reasons = {"malformed", "unknown-version", "unknown-agent", "not-a-task"}
                assert set(by_reason) == reasons
                assert by_reason["malformed"].data == malformed
                assert by_reason["unknown-version"].data == unknown_version
                assert "version 99" in by_reason["unknown-version"].detail
                assert by_reason["unknown-agent"].data == foreign
                assert by_reason["not-a-task"].data == stray
                assert {x.agent for x in letters} == {AGENT}
                assert {x.worker for x in letters} == {worker}

                code, out, err = await broker.dlq("list", "--json")
                assert code == 0, err
                listed = json.loads(out)
                assert {x["id"] for x in listed} == {x.id for x in letters}
                assert {x["size"] for x in listed} == {len(x.data) for x in letters}
                code, out, err = await broker.dlq("list", "--limit", "2")
                assert code == 0, err
                assert out.count(AGENT) == 2
                assert "reason" in out

                # Replayed, they come back to the worker, which sets them aside again.
                code, out, err = await broker.dlq("replay", "--all")
                assert code == 0, err
                assert "4 dead letters replayed" in out
                again = await stored(caller.adapter, 4, not_in=frozenset(x.id for x in letters))
                assert {x.reason for x in again} == set(by_reason)
                await caller.result(version_id, count=2)
        finally:
            await caller.adapter.aclose()

    await on_asyncio(scenario)


class PutBack:
    """A consumer of the agent's tasks that takes one and puts it back (``nack``): the
    task's next delivery is its second."""

    def __init__(self, broker: Broker) -> None:
        self.adapter = broker.adapter()
        self.taken: list[Delivery] = []
        self._took = asyncio.Event()

    async def take(self, data: bytes, delivery: Delivery) -> None:
        self.taken.append(delivery)
        self._took.set()

    async def __call__(self, publish: Callable[[], Awaitable[None]]) -> None:
        await self.adapter.connect()
        try:
            await self.adapter.consume([AGENT], self.take, prefetch=1, consumer="put-back")
            await publish()
            with anyio.fail_after(HANG):
                await self._took.wait()
            await self.adapter.stop_consuming()
            (delivery,) = self.taken
            assert delivery.deliveries == 1
            # If the consumer's channel went with it, the broker requeued it itself.
            with contextlib.suppress(Exception):
                await delivery.nack()
        finally:
            await self.adapter.aclose()


async def test_a_task_past_the_delivery_limit_is_dead_lettered_and_replayable(
    broker: Broker,
) -> None:
    async def scenario() -> None:
        caller = Caller(broker.adapter())
        try:
            await caller.open()
            task_id, task = caller.task("again")
            await PutBack(broker)(lambda: caller.adapter.publish_task(AGENT, task))
            async with broker.worker() as worker:
                result = await caller.result(task_id)
                assert isinstance(result.error, DeadLetteredError)
                assert "delivery-limit" in str(result.error)
                (letter,) = await stored(caller.adapter, 1)
                assert (letter.reason, letter.deliveries) == ("delivery-limit", 2)
                assert (letter.agent, letter.worker, letter.data) == (AGENT, worker, task)

                code, out, err = await broker.dlq("list")
                assert code == 0, err
                assert letter.id in out
                assert "delivery-limit" in out

                code, out, err = await broker.dlq("replay", "--id", letter.id, "--id", "404")
                assert code == 1
                assert "1 dead letter replayed" in out
                assert "no dead letter with id 404" in err
                assert (await caller.result(task_id, count=2)).unwrap() == "AGAIN"
                assert await caller.adapter.dead_letters(10) == []
        finally:
            await caller.adapter.aclose()

    await on_asyncio(scenario)


async def test_a_message_dead_lettered_twice_is_listed_and_replayed_once(broker: Broker) -> None:
    async def scenario() -> None:
        caller = Caller(broker.adapter())
        try:
            await caller.open()
            task_id, task = caller.task("twice")
            letter = DeadLetter(
                data=task,
                reason="delivery-limit",
                detail="delivered 2 times",
                agent=AGENT,
                worker="w-1",
                timestamp=time.time(),
                deliveries=2,
            )
            # Stored twice: the worker's acknowledgement after storing it failed, and the
            # broker delivered the message again.
            await caller.adapter.publish_dead_letter(letter)
            await caller.adapter.publish_dead_letter(replace(letter, deliveries=3))
            first, second = await stored(caller.adapter, 2)

            code, out, err = await broker.dlq("list", "--json")
            assert code == 0, err
            (row,) = json.loads(out)
            assert {row["id"], *row["other_copies"]} == {first.id, second.id}
            code, out, err = await broker.dlq("list")
            assert code == 0, err
            assert "copies" in out

            code, out, err = await broker.dlq("replay", "--all")
            assert code == 0, err
            assert "1 dead letter replayed" in out
            assert "a copy of a message replayed above" in out
            assert await caller.adapter.dead_letters(10) == []
            async with broker.worker():
                assert (await caller.result(task_id)).unwrap() == "TWICE"
                # Queued after it: a second copy, had one been queued, would have gone to
                # the worker first.
                probe_id, probe = caller.task("probe")
                await caller.adapter.publish_task(AGENT, probe)
                await caller.result(probe_id)
            assert len(caller.results[task_id]) == 1
        finally:
            await caller.adapter.aclose()

    await on_asyncio(scenario)


def test_dlq_commands_report_usage_errors_in_one_line() -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, ["dlq", "list"], env={"MURMUR_BROKER": ""})
    assert missing.exit_code == 2
    assert missing.stderr.startswith("error: no broker")
    both = runner.invoke(cli, ["dlq", "replay", "--broker", "memory://x", "--all", "--id", "1"])
    assert both.exit_code == 2
    assert "pass --id ID (repeatable) or --all" in both.stderr
    unreachable = runner.invoke(cli, ["dlq", "list", "--broker", "redis://u:secret@127.0.0.1:1"])
    assert unreachable.exit_code == 1
    assert unreachable.stderr.count("\n") == 1
    assert "secret" not in unreachable.stderr


def test_a_dead_letter_is_stored_as_json_with_its_bytes_intact() -> None:
    letter = DeadLetter(b"\xff\x00 not utf-8", "malformed", "why", "a b", "w", 1.5, 2)
    assert DeadLetter.from_json(letter.to_json(), "7") == letter.stored_as("7")
    with pytest.raises(InvalidValueError, match="dead letter 8"):
        DeadLetter.from_json(b"{}", "8")


def test_an_agent_name_comes_back_from_its_channel_name() -> None:
    for name in ("shout", "réviseur", "a.b_c d", "_5f"):
        assert unsafe_name(safe_name(name)) == name


def test_max_deliveries_must_be_a_positive_int() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidValueError, match="max_deliveries"):
            Worker("memory://", [app.shout], max_deliveries=bad)  # type: ignore[arg-type]
