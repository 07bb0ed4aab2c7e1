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
from distributed.contract import unserved, worker_args
from murmur import (
    AgentResult,
    AgentRuntime,
    AgentTimeoutError,
    DeadLetteredError,
    InvalidValueError,
    RuntimeOptions,
    TaskSpec,
)
from murmur._bridge import AsyncioBridge
from murmur._envelope import TaskEnvelope
from murmur.cli import app as cli
from murmur.distributed import AgentRegistry
from murmur.distributed._adapter import (
    BrokerAdapter,
    DeadLetter,
    Delivery,
    UnservedLetter,
    load_adapter,
    replayable,
    safe_name,
    unsafe_name,
)
from murmur.distributed._kafka import in_memory_kafka
from murmur.distributed._transport import BrokerTransport
from murmur.distributed._url import parse_broker_url
from murmur.distributed._wire import ResultMessage, TaskMessage, decode, encode
from murmur.distributed._worker import Worker
from support import Recorder
from workers import REPO, WorkerProcess, command_env

pytestmark = pytest.mark.anyio

T = TypeVar("T")
HANG = 20.0
AGENT = "shout"
#: The agent no worker serves (the test app does not define it).
UNSERVED = unserved.__name__
#: An agent whose tasks a test's own consumer takes.
BUSY = "busy"


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
    async def worker(self, *, redeliver_after: float = 30.0) -> AsyncIterator[str]:
        """A worker serving the test app with a delivery limit of 1 (sweeping for unserved
        tasks every ``redeliver_after`` seconds or so); yields its name."""
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
                redeliver_after=redeliver_after,
            )
            async with worker:
                yield worker.name
            return
        process = WorkerProcess(
            *worker_args(self.url, self.namespace),
            "--max-deliveries",
            "1",
            "--redeliver-after",
            str(redeliver_after),
        )
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
        # The worker process declares a queue for every agent the app serves; the tests
        # publish to others too.
        cleanup(kind, spec.namespace, [*AgentRegistry.from_module(app).names(), UNSERVED, BUSY])


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

    def task(
        self, text: str, *, agent: str = AGENT, deadline: float | None = None
    ) -> tuple[str, bytes]:
        """A task message for ``agent``: its correlation id and bytes."""
        correlation_id = uuid.uuid4().hex
        envelope = TaskEnvelope(
            agent=agent, task=TaskSpec(input=text), trace_id="t", deadline=deadline
        )
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


#: Seconds between a worker's sweeps for unserved tasks, about, in the tests.
SWEEP = 0.5


async def leftovers(broker: Broker, agent: str) -> list[bytes]:
    """The task messages still waiting for ``agent`` (taken, and acknowledged), in order:
    those before a marker published now."""
    adapter = broker.adapter()
    marker = encode(
        TaskMessage(
            envelope=TaskEnvelope(agent=agent, task=TaskSpec(input="marker"), trace_id="t"),
            reply_to="nobody",
            correlation_id="marker",
        )
    )
    taken: list[bytes] = []
    done = asyncio.Event()

    async def take(data: bytes, delivery: Delivery) -> None:
        await delivery.ack()
        if data == marker:
            done.set()
        else:
            taken.append(data)

    await adapter.connect()
    try:
        await adapter.consume([agent], take, prefetch=10, consumer="leftovers")
        await adapter.publish_task(agent, marker)
        with anyio.fail_after(HANG):
            await done.wait()
        await adapter.stop_consuming()
    finally:
        await adapter.aclose()
    return taken


@pytest.mark.parametrize("broker", ["memory", "redis", "nats", "rabbit"], indirect=True)
async def test_a_task_no_worker_serves_is_dead_lettered_once_its_deadline_passes(
    broker: Broker,
) -> None:
    async def scenario() -> None:
        caller = Caller(broker.adapter())
        try:
            await caller.open()
            # Waiting before any worker starts: one with no deadline, one past it.
            waiting_id, waiting = caller.task("no deadline", agent=UNSERVED)
            expired_id, expired = caller.task("late", agent=UNSERVED, deadline=time.time() - 1)
            for data in (waiting, expired):
                await caller.adapter.publish_task(UNSERVED, data)
            async with broker.worker(redeliver_after=SWEEP) as worker:
                # On a channel it serves, a worker answers a task past its deadline without
                # running it.
                late_id, late = caller.task("late", deadline=time.time() - 1)
                await caller.adapter.publish_task(AGENT, late)
                answer = await caller.result(late_id)
                assert isinstance(answer.error, AgentTimeoutError)
                assert "not started" in str(answer.error)

                # A caller's tasks for a served agent succeed; the one for the agent no
                # worker serves fails once its deadline passes (well before the caller
                # would give up on it).
                transport = BrokerTransport(
                    broker.url, namespace=broker.namespace, reply_grace=HANG
                )
                options = RuntimeOptions(timeout_seconds=2)
                outcomes: dict[str, Any] = {}
                async with AgentRuntime(transport=transport, options=options) as runtime:

                    async def served() -> None:
                        tasks = [TaskSpec(input=word) for word in ("a", "b", "c")]
                        outcomes["served"] = await runtime.gather(app.shout, tasks)

                    async def not_served() -> None:
                        outcomes["unserved"] = await runtime.run(unserved, TaskSpec(input="?"))

                    with anyio.fail_after(HANG):
                        async with anyio.create_task_group() as group:
                            group.start_soon(served)
                            group.start_soon(not_served)
                assert [r.unwrap() for r in outcomes["served"]] == ["A", "B", "C"]
                lost = outcomes["unserved"]
                assert isinstance(lost.error, DeadLetteredError)
                assert "(unserved): no worker served agent 'unserved'" in str(lost.error)
                assert lost.agent == UNSERVED

                # A caller tied to a swept task gets its error too.
                answer = await caller.result(expired_id)
                assert isinstance(answer.error, DeadLetteredError)
                assert "unserved" in str(answer.error)

                letters = await stored(caller.adapter, 2)
                assert {x.reason for x in letters} == {"unserved"}
                assert {(x.agent, x.worker, x.deliveries) for x in letters} == {
                    (UNSERVED, worker, 0)
                }
                assert expired in {x.data for x in letters}  # the original bytes
                (other,) = [x for x in letters if x.data != expired]
                swept = decode(other.data)
                assert isinstance(swept, TaskMessage)
                assert swept.envelope.task.task_id == lost.task_id

                code, out, err = await broker.dlq("list")
                assert code == 0, err
                assert out.count("unserved") >= 4  # agent and reason of each

                # Replayed, the task gets a new deadline (and waits for a worker again).
                (letter,) = [x for x in letters if x.data == expired]
                code, out, err = await broker.dlq("replay", "--id", letter.id, "--timeout", "600")
                assert code == 0, err

            # Left in the channel: the task with no deadline, and the replayed one.
            left = await leftovers(broker, UNSERVED)
            assert len(left) == 2
            assert waiting in left
            (replayed,) = [data for data in left if data != waiting]
            message = decode(replayed)
            assert isinstance(message, TaskMessage)
            assert message.correlation_id == expired_id
            assert message.envelope.deadline is not None
            assert message.envelope.deadline > time.time() + 300
            assert caller.results[waiting_id] == []
            assert await caller.adapter.dead_letters(10) == [other]
        finally:
            await caller.adapter.aclose()

    await on_asyncio(scenario)


@pytest.mark.parametrize("broker", ["memory", "redis", "nats", "rabbit"], indirect=True)
async def test_sweeps_leave_consumed_channels_and_set_aside_each_task_once(
    broker: Broker,
) -> None:
    def task(index: int, agent: str) -> bytes:
        envelope = TaskEnvelope(agent=agent, task=TaskSpec(input=index), trace_id="t")
        return encode(TaskMessage(envelope=envelope, reply_to="r", correlation_id=str(index)))

    def every_message(sweeper: str) -> UnservedLetter:
        def letter(data: bytes, agent: str, deliveries: int) -> DeadLetter:
            return DeadLetter(data, "unserved", "test", agent, sweeper, time.time(), deliveries)

        return letter

    async def scenario() -> None:
        held, release = asyncio.Event(), asyncio.Event()

        async def hold(data: bytes, delivery: Delivery) -> None:
            held.set()
            await release.wait()  # busy with it until then
            await delivery.nack()

        consumer, first, second = (broker.adapter() for _ in range(3))
        try:
            for adapter in (consumer, first, second):
                await adapter.connect()
            busy = [task(i, BUSY) for i in range(3)]
            tasks = [task(i, UNSERVED) for i in range(200)]
            for data in (*busy, *tasks):
                await first.publish_task(BUSY if data in busy else UNSERVED, data)
            # A consumer busy with the first of its tasks: its channel is served.
            await consumer.consume([BUSY], hold, prefetch=1, consumer="busy")
            with anyio.fail_after(HANG):
                await held.wait()
            mine = [AGENT, UNSERVED]  # the busy channel only
            assert await first.sweep_unserved(mine, every_message("first")) == []
            # Two sweeping at once: each task is set aside once, by one of them.
            swept: list[DeadLetter] = []

            async def sweep(adapter: BrokerAdapter, name: str) -> None:
                swept.extend(await adapter.sweep_unserved([AGENT], every_message(name)))

            with anyio.fail_after(HANG):
                async with anyio.create_task_group() as group:
                    group.start_soon(sweep, first, "first")
                    group.start_soon(sweep, second, "second")
            assert sorted(x.data for x in swept) == sorted(tasks)
            letters = await first.dead_letters(1000)
            assert sorted(x.data for x in letters) == sorted(tasks)
            assert {x.id for x in letters} == {x.id for x in swept}
            release.set()
            await consumer.stop_consuming()
        finally:
            for adapter in (consumer, first, second):
                await adapter.aclose()
        assert await leftovers(broker, UNSERVED) == []

    await on_asyncio(scenario)


def test_a_replay_gives_a_task_past_its_deadline_a_new_one() -> None:
    def task(deadline: float | None) -> bytes:
        envelope = TaskEnvelope(agent="a", task=TaskSpec(input=1), trace_id="t", deadline=deadline)
        return encode(TaskMessage(envelope=envelope, reply_to="r", correlation_id="c"))

    past = task(5.0)
    refreshed = decode(replayable(past, 60))
    assert isinstance(refreshed, TaskMessage)
    assert refreshed.envelope.deadline is not None
    assert time.time() + 50 < refreshed.envelope.deadline < time.time() + 70
    unchanged = refreshed.envelope.model_copy(update={"deadline": 5.0})
    assert encode(refreshed.model_copy(update={"envelope": unchanged})) == past
    # No deadline, one still ahead, or not a task message: replayed as they are.
    for kept in (task(None), task(time.time() + 99), b"{not json", b"[1]", b'{"envelope": 1}'):
        assert replayable(kept, 60) == kept


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
