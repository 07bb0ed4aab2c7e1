"""``murmur worker start``: a real worker process serving tests/distributed/app.py over Redis.

Each test starts the worker as a subprocess (``python -m murmur worker start ...`` from the
repository root) with its own namespace, waits for its JSON log lines (never a fixed
sleep), sends it tasks from an ``AgentRuntime(broker=...)`` in this process, and stops it
with signals. The one-line start errors run the command too, with nothing to connect to.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner

from distributed.app import explode, hold, shout
from distributed.brokers import REDIS_URL as REDIS
from distributed.brokers import delete_redis_keys, require
from murmur import AgentRuntime, EventType, RemoteAgentError, TaskSpec
from murmur.cli import app
from murmur.cli._serve import _console_line
from support import Recorder
from workers import REPO, STEP_SECONDS, WorkerProcess, command_env

APP = "tests.distributed.app"


@pytest.fixture
def namespace() -> Iterator[str]:
    """A namespace of this test's own; its streams are deleted afterwards (a test that
    needs Redis fails when it is not running)."""
    require("redis")
    ns = f"test-cli-{uuid.uuid4().hex[:10]}"
    yield ns
    delete_redis_keys(ns)


@pytest.fixture
async def start_worker(namespace: str) -> AsyncIterator[Any]:
    """Start ``murmur worker start --log-format json`` in the test's namespace."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess("--namespace", namespace, "--log-format", "json", *args, env=env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


#: Heartbeats often enough to see a task in flight (the tests wait for the line that does).
FAST_HEARTBEAT = ("--heartbeat", "0.05")


# -- serving ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_worker_serves_tasks_until_sigterm(
    start_worker: Any, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --app and --broker from the environment; --agents repeated and comma-separated.
    worker = start_worker(
        "--agents",
        "shout",
        "--agents",
        "explode,shout",
        "--name",
        "w1",
        "--concurrency",
        "3",
        "--heartbeat",
        "0",
        env=command_env(MURMUR_APP=APP, MURMUR_BROKER=REDIS),
    )
    started = await worker.wait_for("worker.started")
    assert started["worker"] == "w1"
    assert started["agents"] == ["explode", "shout"]
    assert started["concurrency"] == 3
    assert isinstance(started["timestamp"], str)

    monkeypatch.setenv("MURMUR_NAMESPACE", namespace)
    async with AgentRuntime(broker=REDIS) as runtime:
        shouted = await runtime.gather(shout, [TaskSpec(input=word) for word in ("a", "b", "c")])
        failed = await runtime.run(explode, TaskSpec(input="x"))
    assert [result.output for result in shouted] == ["A", "B", "C"]
    assert isinstance(failed.error, RemoteAgentError)
    assert failed.error.type_name.endswith("ValueError")

    worker.signal(signal.SIGTERM)
    requested = await worker.wait_for("worker.stop_requested")
    assert (requested["signal"], requested["mode"], requested["worker"]) == (
        "SIGTERM",
        "drain",
        "w1",
    )
    stopped = await worker.wait_for("worker.stopped")
    assert (stopped["processed"], stopped["failed"], stopped["in_flight"]) == (3, 1, 0)
    assert stopped["per_agent"] == {"shout": 3, "explode": 1}
    assert await worker.exit_code() == 0


@pytest.mark.anyio
async def test_sigterm_lets_the_task_in_flight_finish_and_send_its_result(
    start_worker: Any, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = start_worker("--app", APP, "--broker", REDIS, "--grace", "30", *FAST_HEARTBEAT)
    await worker.wait_for("worker.started")
    flag = tmp_path / "release"
    monkeypatch.setenv("MURMUR_NAMESPACE", namespace)
    async with AgentRuntime(broker=REDIS) as runtime:
        results: list[Any] = []

        async def call() -> None:
            results.append(await runtime.run(hold, TaskSpec(input=str(flag))))

        with anyio.fail_after(STEP_SECONDS):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(call)
                await worker.wait_for("worker.heartbeat", in_flight=1)  # running there now
                worker.signal(signal.SIGTERM)
                requested = await worker.wait_for("worker.stop_requested")
                assert (requested["mode"], requested["in_flight"]) == ("drain", 1)
                flag.write_text("finished after SIGTERM")
    assert results[0].error is None
    assert results[0].output == "finished after SIGTERM"
    stopped = await worker.wait_for("worker.stopped")
    assert (stopped["processed"], stopped["in_flight"]) == (1, 0)
    assert await worker.exit_code() == 0


@pytest.mark.anyio
async def test_a_second_signal_stops_at_once(
    start_worker: Any, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = start_worker("--app", APP, "--broker", REDIS, "--agents", "hold", *FAST_HEARTBEAT)
    await worker.wait_for("worker.started")
    monkeypatch.setenv("MURMUR_NAMESPACE", namespace)
    async with AgentRuntime(broker=REDIS) as runtime:
        with anyio.fail_after(STEP_SECONDS):
            async with anyio.create_task_group() as task_group:
                # Never released: it stays in flight until the worker is stopped.
                task_group.start_soon(runtime.run, hold, TaskSpec(input=str(tmp_path / "never")))
                await worker.wait_for("worker.heartbeat", in_flight=1)
                worker.signal(signal.SIGTERM)
                assert (await worker.wait_for("worker.stop_requested"))["mode"] == "drain"
                worker.signal(signal.SIGINT)
                assert (await worker.wait_for("worker.stop_requested"))["mode"] == "now"
                stopped = await worker.wait_for("worker.stopped")
                task_group.cancel_scope.cancel()  # its result will never come
    # Cancelled, not finished: left unacknowledged on the broker for another worker.
    assert (stopped["processed"], stopped["failed"], stopped["in_flight"]) == (0, 0, 0)
    assert await worker.exit_code() == 128 + signal.SIGINT


@pytest.mark.anyio
async def test_a_rate_limit_on_the_command_line_limits_the_tasks_the_worker_runs(
    start_worker: Any, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """burst=2 and one request per 2 s after it (rpm=2 over period=2, less the burst): of
    three tasks sent at once, two start at once and the third waits on the worker, which
    says so in its heartbeats, its caller's events and the third task's result."""
    import redis

    name = f"{namespace}-shout"
    spec = f"agent=shout,rpm=2,burst=2,period=2,store={REDIS},name={name}"
    worker = start_worker("--app", APP, "--broker", REDIS, "--rate-limit", spec, *FAST_HEARTBEAT)
    started = await worker.wait_for("worker.started")
    assert started["rate_limits"] == [
        {"limit": name, "factor": 1.0, "slowed": {}, "waiting": 0, "paused_until": None}
    ]
    recorder = Recorder()
    monkeypatch.setenv("MURMUR_NAMESPACE", namespace)
    try:
        async with AgentRuntime(broker=REDIS, event_emitter=recorder) as runtime:
            with anyio.fail_after(STEP_SECONDS):
                results = await runtime.gather(
                    shout, [TaskSpec(input=word) for word in ("a", "b", "c")]
                )
        assert [result.output for result in results] == ["A", "B", "C"]
        assert sorted(result.rate_limit_wait > 0 for result in results) == [False, False, True]
        [waited] = recorder.of(EventType.RATE_LIMIT_WAITED)
        assert (waited.data["limit"], waited.data["limits"]) == (name, [name])
        assert waited.data["waited"] == max(result.rate_limit_wait for result in results)
        # A heartbeat while the third task waited says so; read up to the one after all ran.
        waiting_seen = False
        while True:
            beat = await worker.wait_for("worker.heartbeat")
            [state] = beat["rate_limits"]
            waiting_seen = waiting_seen or state["waiting"] == 1
            if beat["processed"] == 3:
                break
        assert waiting_seen, worker.output()
        assert state == {
            "limit": name,
            "factor": 1.0,
            "slowed": {},
            "waiting": 0,
            "paused_until": None,
        }
        assert worker.stop() == 0
    finally:
        client = redis.Redis.from_url(REDIS)
        client.delete(f"murmur:ratelimit:{name}")
        client.close()


# -- one-line errors at start -------------------------------------------------------------


def run_command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "murmur", "worker", "start", *args],
        cwd=REPO,
        env=env if env is not None else command_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The error line, checked: exit ``code``, nothing on stdout, one line on stderr."""
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_no_app_is_a_usage_error() -> None:
    line = one_line_error(run_command("--broker", REDIS), 2)
    assert "--app" in line
    assert "MURMUR_APP" in line


def test_no_broker_is_a_usage_error() -> None:
    line = one_line_error(run_command("--app", APP), 2)
    assert "--broker" in line
    assert "MURMUR_BROKER" in line


def test_an_app_that_cannot_be_imported_says_why() -> None:
    line = one_line_error(
        run_command("--app", "tests.distributed.no_such_app", "--broker", REDIS), 2
    )
    assert "cannot import the app module 'tests.distributed.no_such_app'" in line
    assert "ModuleNotFoundError" in line


def test_an_unknown_agent_lists_the_ones_the_app_defines() -> None:
    line = one_line_error(
        run_command("--app", APP, "--broker", REDIS, "--agents", "shout,nobody"), 2
    )
    assert "no agent named 'nobody'" in line
    assert "'shout'" in line
    assert "'explode'" in line


@pytest.mark.parametrize(
    "url", ["redis://user:hunter2@127.0.0.1:99999", "mqtt://user:hunter2@127.0.0.1"]
)
def test_a_bad_broker_url_never_shows_its_password(url: str) -> None:
    line = one_line_error(run_command("--app", APP, "--broker", url), 2)
    assert "hunter2" not in line
    assert "redis://" in line  # the accepted schemes


def test_an_unreachable_broker_exits_1_without_its_password() -> None:
    # Port 1 on the loopback: nothing listens there, the connection is refused at once.
    line = one_line_error(
        run_command(
            "--app", APP, "--broker", "redis://user:hunter2@127.0.0.1:1", "--log-format", "json"
        ),
        1,
    )
    assert "cannot connect to broker redis://user:***@127.0.0.1:1" in line
    assert "hunter2" not in line


def test_a_missing_extra_names_the_install_command(tmp_path: Path) -> None:
    # A `redis` package that is not there: as if murmur-agents[redis] were not installed.
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'redis'\", name='redis')\n"
    )
    env = command_env()
    env["PYTHONPATH"] = os.pathsep.join((str(tmp_path), env["PYTHONPATH"]))
    line = one_line_error(run_command("--app", APP, "--broker", REDIS, env=env), 2)
    assert "pip install 'murmur-agents[redis]'" in line


# -- help and log lines --------------------------------------------------------------------


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "100"})


def test_worker_start_help_reads_well() -> None:
    result = invoke("worker", "start", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for expected in (
        "murmur worker start --app myproject.agents --broker redis://localhost:6379",
        "MURMUR_APP=myproject.agents murmur worker start --agents researcher",
        "env var: MURMUR_APP",
        "env var: MURMUR_BROKER",
        "env var: MURMUR_NAMESPACE",
        "Tasks this worker runs at once, at most.",
        "--grace seconds",
        "A second signal stops it at once",
        "130 for Ctrl-C, 143 for SIGTERM",
        "auto|console|json",
        "--rate-limit 'model=openai:gpt-4o,rpm=500,tpm=200000,store=redis://localhost:6379/0'",
        "--rate-limit 'provider=anthropic,rpm=50'",
        "env var: MURMUR_RATE_LIMITS",
        "a bad broker URL or --rate-limit",
    ):
        assert expected in text, expected


def test_murmur_worker_alone_prints_its_help() -> None:
    result = invoke("worker")
    assert result.exit_code == 0
    assert "start" in result.output
    assert "Run workers that serve an app's agents from a broker" in result.output
    assert "worker" in invoke("--help").output


def test_console_lines_are_plain_key_values() -> None:
    line = _console_line(
        "worker.heartbeat",
        0.0,
        {"worker": "w1", "processed": 3, "rate": 1.5, "agents": ["a", "b"], "per_agent": {"a": 3}},
    )
    assert line.split(None, 2)[2].split() == [
        "worker.heartbeat",
        "w1",
        "processed=3",
        "rate=1.50",
        "agents=a,b",
        "per_agent=a:3",
    ]
