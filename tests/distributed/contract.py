"""The transport contract: what distributed mode does, whichever broker carries it.

``BrokerContract`` holds the behavioural tests; each broker's test module subclasses it
(``test_contract_<broker>.py``), so every broker passes the same tests, on asyncio and Trio
callers. A subclass gives:

* ``broker_url``: a class-scoped fixture returning the broker's URL (failing, never
  skipping, when the broker is not running);
* how its workers run: in-process ``Worker``s by default, or real ``murmur worker start``
  processes by mixing in ``SubprocessWorkers`` first;
* ``cleanup(url, namespace)``: delete what the class's namespace left on the broker.

A broker whose URLs carry a password also mixes in ``PasswordContract`` and gives
``unreachable_url``: a URL of its scheme with a password, where nothing listens.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

from distributed import app
from murmur import (
    AgentRuntime,
    AgentTimeoutError,
    BrokerUnavailableError,
    EventType,
    RemoteAgentError,
    RuntimeEvent,
    RuntimeOptions,
    TaskCancelledError,
    TaskSpec,
)
from murmur.distributed import AgentRegistry
from murmur.distributed._transport import DEFAULT_REPLY_GRACE, BrokerTransport
from murmur.distributed._worker import Worker
from support import Recorder
from workers import WorkerProcess

#: Tasks each worker runs at once (more than any test's ``max_concurrency``).
WORKER_CONCURRENCY = 8
#: A generous bound on every call: a broken transport fails a test instead of hanging it.
HANG = 20.0
#: Seconds a task left by a stopped worker may take to reach another.
REDELIVERY = 3.0


@dataclass(frozen=True)
class Workers:
    """The workers serving ``tests.distributed.app`` for a test."""

    #: Their names, as events from them carry in ``data["worker"]`` (empty: not known).
    names: frozenset[str]

    def sent(self, event: RuntimeEvent) -> bool:
        """Whether ``event`` came from one of these workers, naming it."""
        name = event.data.get("worker")
        return bool(name) and (not self.names or name in self.names)


async def unserved(text: str) -> str:
    """An agent no worker serves (the app does not define it)."""
    return text


def app_worker(url: str, namespace: str, *, concurrency: int = WORKER_CONCURRENCY) -> Worker:
    """A ``Worker`` serving the app in this process (on the loop that starts it)."""
    return Worker(
        url,
        AgentRegistry.from_module(app),
        concurrency=concurrency,
        name=f"contract-{uuid.uuid4().hex[:6]}",
        namespace=namespace,
        event_emitter=Recorder(),
        heartbeat_seconds=0,
        grace_seconds=5,
    )


@asynccontextmanager
async def in_process_workers(url: str, namespace: str) -> AsyncIterator[Workers]:
    """One ``Worker`` serving the app in this process, on the test's event loop."""
    async with app_worker(url, namespace) as worker:
        yield Workers(frozenset({worker.name}))


class Ledger:
    """What ``app.metered`` tasks recorded in a folder (on whichever worker ran them)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _indices(self, step: str) -> set[int]:
        return {int(p.name.rpartition("-")[2]) for p in self.folder.glob(f"{step}-*")}

    def started(self) -> set[int]:
        return self._indices("started")

    def running_or_stopped(self) -> set[int]:
        """Tasks that started and did not return at once (they ran until cancelled)."""
        return self.started() - self._indices("done")

    def stopped(self) -> set[int]:
        return self._indices("stopped")

    async def wait(self, condition: Callable[[Ledger], bool], what: str) -> None:
        """Until ``condition(self)`` holds (bounded by ``HANG``)."""
        try:
            with anyio.fail_after(HANG):
                while not condition(self):
                    await anyio.sleep(0.01)  # polling files the worker process writes
        except TimeoutError:
            raise AssertionError(
                f"not {what} within {HANG}s: started {sorted(self.started())}, stopped "
                f"{sorted(self.stopped())}"
            ) from None

    async def drain(self, runtime: AgentRuntime) -> None:
        """Send one more ``metered`` task and wait for it: the tasks queued before it have
        all reached a worker by then (an agent's queue is first in, first out)."""
        probe = app.Meter(dir=str(self.folder / "probe"), index=0, quick=1)
        result = await runtime.run(app.metered, TaskSpec(input=probe))
        assert result.unwrap() == 0


@pytest.mark.anyio
class BrokerContract:
    """Every broker passes these; see the module docstring for what a subclass gives."""

    @pytest.fixture(scope="class")
    @classmethod
    def broker_url(cls) -> str:
        raise NotImplementedError("a broker's contract class gives its broker_url fixture")

    @classmethod
    def cleanup(cls, url: str, namespace: str) -> None:
        """Delete what ``namespace`` left on the broker (after the class's tests)."""

    @pytest.fixture(scope="class")
    @classmethod
    def namespace(cls, broker_url: str) -> Iterator[str]:
        namespace = f"contract-{uuid.uuid4().hex[:10]}"
        yield namespace
        cls.cleanup(broker_url, namespace)

    @pytest.fixture
    async def workers(self, broker_url: str, namespace: str) -> AsyncIterator[Workers]:
        async with in_process_workers(broker_url, namespace) as workers:
            yield workers

    @staticmethod
    def caller(
        url: str,
        namespace: str,
        *,
        options: RuntimeOptions | None = None,
        events: Recorder | None = None,
        reply_grace: float = DEFAULT_REPLY_GRACE,
    ) -> AgentRuntime:
        """A runtime sending its attempts to the workers through the broker."""
        return AgentRuntime(
            transport=BrokerTransport(url, namespace=namespace, reply_grace=reply_grace),
            options=options,
            event_emitter=events if events is not None else Recorder(),
        )

    # -- the contract ------------------------------------------------------------------

    async def test_a_task_runs_on_a_worker(
        self, broker_url: str, namespace: str, workers: Workers
    ) -> None:
        task = TaskSpec(input="hello")
        with anyio.fail_after(HANG):
            async with self.caller(broker_url, namespace) as runtime:
                result = await runtime.run(app.shout, task)
        assert result.unwrap() == "HELLO"
        assert (result.agent, result.task_id, result.attempts) == ("shout", task.task_id, 1)

    async def test_a_result_names_the_worker_that_ran_it(
        self, broker_url: str, namespace: str, workers: Workers
    ) -> None:
        with anyio.fail_after(HANG):
            async with self.caller(broker_url, namespace) as runtime:
                shouted = await runtime.run(app.shout, TaskSpec(input="hi"))
                failed = await runtime.run(app.explode, TaskSpec(input="boom"))
        for result in (shouted, failed):
            assert result.worker, result
            assert not workers.names or result.worker in workers.names
        assert failed.error is not None

    async def test_a_gather_of_100_comes_back_in_order(
        self, broker_url: str, namespace: str, workers: Workers
    ) -> None:
        tasks = [TaskSpec(input=f"task {i}") for i in range(100)]
        with anyio.fail_after(HANG):
            async with self.caller(broker_url, namespace) as runtime:
                results = await runtime.gather(app.shout, tasks)
        assert [r.unwrap() for r in results] == [f"TASK {i}" for i in range(100)]
        assert [r.task_id for r in results] == [t.task_id for t in tasks]

    async def test_max_concurrency_bounds_the_tasks_out_on_the_broker(
        self, broker_url: str, namespace: str, workers: Workers
    ) -> None:
        limit = 3
        assert limit < WORKER_CONCURRENCY  # the worker would run more, if it were sent more
        batch = uuid.uuid4().hex
        probe = {"batch": batch, "limit": limit, "size": 20}
        tasks = [TaskSpec(input=probe) for _ in range(20)]
        with anyio.fail_after(HANG):
            async with self.caller(broker_url, namespace) as runtime:
                results = await runtime.gather(app.overlap, tasks, max_concurrency=limit)
        # Each result is the most tasks of the batch the worker saw running at once.
        assert max(r.unwrap() for r in results) == limit

    async def test_failures_are_data_and_the_rest_of_the_batch_completes(
        self, broker_url: str, namespace: str, workers: Workers
    ) -> None:
        inputs = ["a", "", "b", "c", "", "d"]
        with anyio.fail_after(HANG):
            async with self.caller(broker_url, namespace) as runtime:
                results = await runtime.gather(app.fussy, [TaskSpec(input=i) for i in inputs])
                single = await runtime.run(app.explode, TaskSpec(input="boom"))
        assert [r.output for r in results] == ["A", None, "B", "C", None, "D"]
        for result in (results[1], results[4], single):
            error = result.error
            if isinstance(error, RemoteAgentError):
                assert error.type_name == "ValueError"
                assert "explode refused" in error.message
                assert error.remote_traceback is not None
                assert "ValueError" in error.remote_traceback
            else:
                assert isinstance(error, ValueError)
                assert "explode refused" in str(error)
        assert "'boom'" in str(single.error)

    async def test_a_remote_timeout_is_still_an_agent_timeout(
        self, broker_url: str, namespace: str, workers: Workers
    ) -> None:
        events = Recorder()
        options = RuntimeOptions(timeout_seconds=0.3)
        with anyio.fail_after(HANG):
            async with self.caller(broker_url, namespace, options=options, events=events) as rt:
                result = await rt.run(app.forever, TaskSpec(input="wait"))
        assert isinstance(result.error, AgentTimeoutError)
        assert "passed its deadline" in str(result.error)  # the worker's verdict, not lost
        (timed_out,) = events.of(EventType.ATTEMPT_TIMED_OUT)
        assert workers.sent(timed_out)

    async def test_a_task_no_worker_serves_times_out_after_its_grace(
        self, broker_url: str, namespace: str, workers: Workers
    ) -> None:
        # Long enough for the first publish to declare the agent's queue (a RabbitMQ quorum
        # queue takes a while to create): the attempt's deadline bounds the publish too.
        options = RuntimeOptions(timeout_seconds=2)
        with anyio.fail_after(HANG):
            async with self.caller(
                broker_url, namespace, options=options, reply_grace=0.2
            ) as runtime:
                result = await runtime.run(unserved, TaskSpec(input="anyone?"))
        assert isinstance(result.error, AgentTimeoutError)
        assert "no worker serves this agent" in str(result.error)
        assert result.agent == "unserved"

    async def test_structured_output_comes_back_as_the_model(
        self, broker_url: str, namespace: str, workers: Workers
    ) -> None:
        with anyio.fail_after(HANG):
            async with self.caller(broker_url, namespace) as runtime:
                verdict = await runtime.run(app.judge, TaskSpec(input="how is it?"))
                summary = await runtime.run(app.summariser, TaskSpec(input="the news"))
        assert verdict.unwrap() == app.Verdict(label="fine", score=7)
        assert type(verdict.output) is app.Verdict
        assert verdict.usage.requests == 1  # the model's usage crossed too
        assert summary.unwrap() == "summary of the news"

    async def test_a_group_runs_its_nodes_on_workers(
        self, broker_url: str, namespace: str, workers: Workers
    ) -> None:
        with anyio.fail_after(HANG):
            async with self.caller(broker_url, namespace) as runtime:
                result = await runtime.run_group(app.counting, TaskSpec(input="one two three"))
        assert result.unwrap() == "3 words"
        assert result.status == {"words": "succeeded", "count": "succeeded", "report": "succeeded"}
        assert result.results["words"].output == ["one", "two", "three"]
        assert result.results["count"].output == 3

    async def test_worker_events_reach_the_caller_in_order_naming_the_worker(
        self, broker_url: str, namespace: str, workers: Workers
    ) -> None:
        events = Recorder()
        tasks = [TaskSpec(input=3) for _ in range(5)]
        with anyio.fail_after(HANG):
            async with self.caller(broker_url, namespace, events=events) as runtime:
                results = await runtime.gather(app.narrate, tasks)
        assert [r.unwrap() for r in results] == [3] * 5
        by_task: dict[str | None, list[Any]] = defaultdict(list)
        for event in events.events:
            by_task[event.task_id].append(event)
        for task in tasks:
            seen = by_task[task.task_id]
            assert [e.type for e in seen] == [
                EventType.TASK_STARTED,
                *[EventType.CHILD_SPAWNED] * 3,
                EventType.TASK_SUCCEEDED,
            ]
            steps = seen[1:-1]
            assert [e.data["step"] for e in steps] == [0, 1, 2]
            assert all(workers.sent(e) for e in steps)
            assert all(e.agent == "narrate" for e in seen)

    async def test_a_retry_across_the_wire_counts_attempts_and_usage(
        self, broker_url: str, namespace: str, workers: Workers
    ) -> None:
        events = Recorder()
        options = RuntimeOptions(retry_max_attempts=3, retry_initial_delay=0)
        with anyio.fail_after(HANG):
            async with self.caller(broker_url, namespace, options=options, events=events) as rt:
                result = await rt.run(app.flaky, TaskSpec(input="again"))
        assert result.unwrap() == "again on attempt 2"
        assert result.attempts == 2
        assert result.usage == app.FLAKY_USAGE + app.FLAKY_USAGE
        assert len(events.of(EventType.RETRY_SCHEDULED)) == 1

    async def test_a_transient_failure_is_retried_as_it_is_in_process(
        self, broker_url: str, namespace: str, workers: Workers
    ) -> None:
        options = RuntimeOptions(retry_max_attempts=2, retry_initial_delay=0)
        with anyio.fail_after(HANG):
            async with self.caller(broker_url, namespace, options=options) as runtime:
                result = await runtime.run(app.disconnects, TaskSpec(input="x"))
        assert result.unwrap() == "x on attempt 2"

    async def test_a_task_a_stopped_worker_left_runs_on_another(self, broker_url: str) -> None:
        namespace = f"contract-{uuid.uuid4().hex[:10]}"  # no other worker may take it
        running, done = anyio.Event(), anyio.Event()
        results: list[Any] = []

        class Watch(Recorder):
            async def emit(self, event: RuntimeEvent) -> None:
                await super().emit(event)
                if event.type is EventType.CHILD_SPAWNED:
                    running.set()

        async def call(runtime: AgentRuntime) -> None:
            results.append(await runtime.run(app.stall, TaskSpec(input="again")))
            done.set()

        first = app_worker(broker_url, namespace, concurrency=1)
        try:
            async with (
                self.caller(broker_url, namespace, events=Watch()) as runtime,
                anyio.create_task_group() as task_group,
            ):
                task_group.start_soon(call, runtime)
                async with anyio.create_task_group() as serving:
                    await serving.start(first.serve)
                    with anyio.fail_after(HANG):
                        await running.wait()
                    first.stop_now()  # the task is cut off, not settled
                async with in_process_workers(broker_url, namespace):
                    with anyio.fail_after(REDELIVERY):
                        await done.wait()
        finally:
            self.cleanup(broker_url, namespace)
        (result,) = results
        assert result.unwrap() == "again"

    # -- cancellation reaches the workers ----------------------------------------------

    async def test_a_cancelled_gather_revokes_its_queued_tasks_and_cancels_its_running_ones(
        self, broker_url: str, namespace: str, workers: Workers, tmp_path: Path
    ) -> None:
        quick, size = 100, 1000
        ledger = Ledger(tmp_path)
        tasks = [
            TaskSpec(input=app.Meter(dir=str(tmp_path), index=i, quick=quick)) for i in range(size)
        ]
        answered = anyio.Event()

        class Count(Recorder):
            succeeded = 0

            async def emit(self, event: RuntimeEvent) -> None:
                if event.type is EventType.TASK_SUCCEEDED:
                    self.succeeded += 1
                    if self.succeeded == quick:
                        answered.set()

        async def gather(runtime: AgentRuntime) -> None:
            await runtime.gather(app.metered, tasks, max_concurrency=size)
            raise AssertionError("the gather was to be cancelled")

        with anyio.fail_after(HANG):
            async with self.caller(broker_url, namespace, events=Count()) as runtime:
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(gather, runtime)
                    await answered.wait()
                    await ledger.wait(lambda seen: bool(seen.running_or_stopped()), "running")
                    task_group.cancel_scope.cancel()
                # What ran on the workers when the gather was cancelled stops...
                await ledger.wait(
                    lambda seen: seen.running_or_stopped() <= seen.stopped(), "all stopped"
                )
                # ...and what was queued reaches them, and none of it runs.
                await ledger.drain(runtime)
        ran = ledger.running_or_stopped()
        assert ran <= ledger.stopped()
        assert len(ran) <= WORKER_CONCURRENCY * max(1, len(workers.names))
        assert len(ledger.started()) < size

    async def test_a_cancelled_gather_is_revoked_by_its_batch_id_alone(
        self,
        broker_url: str,
        namespace: str,
        workers: Workers,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # The cancel names one attempt and the batch: the workers stop the others, running
        # or queued, by the batch id their envelopes carry.
        send_cancel = BrokerTransport._send_cancel
        named: list[list[str]] = []

        async def first_id_only(
            self: BrokerTransport, adapter: Any, ids: list[str], *args: Any
        ) -> None:
            named.append(ids)
            await send_cancel(self, adapter, ids[:1], *args)

        monkeypatch.setattr(BrokerTransport, "_send_cancel", first_id_only)
        ledger = Ledger(tmp_path)
        size = 50
        tasks = [TaskSpec(input=app.Meter(dir=str(tmp_path), index=i)) for i in range(size)]
        slots = WORKER_CONCURRENCY * max(1, len(workers.names))
        with anyio.fail_after(HANG):
            async with self.caller(broker_url, namespace) as runtime:
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(runtime.gather, app.metered, tasks)
                    await ledger.wait(lambda seen: len(seen.started()) >= slots, "running")
                    task_group.cancel_scope.cancel()
                await ledger.wait(
                    lambda seen: seen.running_or_stopped() <= seen.stopped(), "all stopped"
                )
                await ledger.drain(runtime)
        assert len(named) == 1  # one cancel, for the whole batch
        assert len(ledger.started()) == slots  # the queued ones never ran
        assert ledger.started() <= ledger.stopped()

    async def test_a_cancelled_run_cancels_its_attempt_on_the_worker(
        self, broker_url: str, namespace: str, workers: Workers, tmp_path: Path
    ) -> None:
        ledger = Ledger(tmp_path)
        task = TaskSpec(input=app.Meter(dir=str(tmp_path), index=7))
        with anyio.fail_after(HANG):
            async with self.caller(broker_url, namespace) as runtime:
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(runtime.run, app.metered, task)
                    await ledger.wait(lambda seen: seen.started() == {7}, "started")
                    task_group.cancel_scope.cancel()
                await ledger.wait(lambda seen: seen.stopped() == {7}, "stopped")

    async def test_fail_fast_stops_the_rest_of_the_batch_on_the_workers(
        self, broker_url: str, namespace: str, workers: Workers, tmp_path: Path
    ) -> None:
        ledger = Ledger(tmp_path)
        size = 30
        tasks = [
            TaskSpec(input=app.Meter(dir=str(tmp_path), index=i, fail_when=3)) for i in range(size)
        ]
        with anyio.fail_after(HANG):
            async with self.caller(broker_url, namespace) as runtime:
                results = await runtime.gather(
                    app.metered, tasks, max_concurrency=size, fail_fast=True
                )
                await ledger.wait(
                    lambda seen: seen.running_or_stopped() <= seen.stopped(), "all stopped"
                )
                await ledger.drain(runtime)
        (failed,) = [r for r in results if not isinstance(r.error, TaskCancelledError)]
        assert "fails first" in str(failed.error)
        # The failed task's slot may take one more before the cancel reaches its worker
        # (then cancelled too); the rest of the queue never runs.
        slots = WORKER_CONCURRENCY * max(1, len(workers.names))
        assert len(ledger.started()) <= slots + 1
        assert ledger.started() <= ledger.stopped()


@pytest.mark.anyio
class PasswordContract:
    """Mix in for a broker whose URLs carry a password (``memory://`` has none; the
    in-memory Kafka never fails to connect)."""

    #: A URL of this broker's scheme, with the password ``secret``, where nothing listens.
    unreachable_url: ClassVar[str]

    async def test_a_password_is_never_shown(self) -> None:
        events = Recorder()
        with anyio.fail_after(HANG):
            async with AgentRuntime(broker=self.unreachable_url, event_emitter=events) as runtime:
                transport = runtime.__murmur_host__().transport
                result = await runtime.run(app.shout, TaskSpec(input="hi"))
        assert isinstance(result.error, BrokerUnavailableError)
        assert ":***@" in str(result.error)
        shown = [repr(transport), str(transport.url), repr(result), str(result.error)]
        shown += [repr(e) for e in events.events]
        assert not [text for text in shown if "secret" in text]


# -- workers as real processes ---------------------------------------------------------------


def worker_args(url: str, namespace: str) -> list[str]:
    """``murmur worker start``'s arguments serving the test app (run from the repository's
    root)."""
    return [
        "--app",
        "tests.distributed.app",
        "--broker",
        url,
        "--namespace",
        namespace,
        "--concurrency",
        str(WORKER_CONCURRENCY),
        "--log-format",
        "json",
    ]


class SubprocessWorkers:
    """Mix in before ``BrokerContract``: the workers are ``murmur worker start`` processes,
    one started for the class."""

    @pytest.fixture(scope="class")
    @classmethod
    def worker_processes(cls, broker_url: str, namespace: str) -> Iterator[Workers]:
        worker = WorkerProcess(*worker_args(broker_url, namespace))
        try:
            started = worker.next_event("worker.started")
        except AssertionError as exc:
            worker.close()
            pytest.fail(f"the worker did not start: {exc}")
        yield Workers(frozenset({started["worker"]}))
        code = worker.stop()
        assert code == 0, "the worker did not drain and exit 0:\n" + worker.output()

    @pytest.fixture
    def workers(self, worker_processes: Workers) -> Workers:
        return worker_processes
