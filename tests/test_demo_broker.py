"""``murmur demo --broker URL``: the demo's fan-out on local worker processes it manages.

Each test runs ``python -m murmur demo --broker ...`` as a real subprocess against the local
Redis, NATS and RabbitMQ servers. The demo is deterministic (every call depends only on the
seed and the ticket id), so its summary must count what the in-process demo counts for the
same settings; then the worker processes must be gone and the demo's namespace deleted.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner

from distributed.brokers import left_on, require
from murmur.cli import app
from murmur.cli._demo import DemoConfig, DemoReport, run_demo
from test_cli import summary
from workers import REPO, STEP_SECONDS, command_env

BACKENDS = ["asyncio", "trio"]
#: 40 tasks, one in 5 failing: all three kinds of failure, and a few seconds a run.
SETTINGS = ["--tasks", "40", "--concurrency", "8", "--fail-every", "5", "--seed", "3"]
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def in_process() -> DemoReport:
    """The in-process demo's report for ``SETTINGS``: what every broker run must count."""
    return anyio.run(run_demo, DemoConfig(tasks=40, concurrency=8, fail_every=5, seed=3))


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "murmur", "demo", *args]


def run_demo_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        demo_command(*args),
        cwd=REPO,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def started_workers(output: str) -> tuple[str, list[int]]:
    """The namespace and the worker pids of the demo's ``Started ...`` line."""
    text = " ".join(_ANSI.sub("", output).split())  # rich wraps long lines
    found = re.search(r"namespace (murmur-demo-[0-9a-f]+): (.*?\.)(?: |$)", text)
    assert found is not None, output
    pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", found.group(2))]
    assert pids, output
    return found.group(1), pids


def assert_gone(pids: list[int]) -> None:
    """The processes have exited and been reaped (by the demo that started them)."""
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.fixture
def demo_namespaces() -> Iterator[list[tuple[str, str]]]:
    """(broker kind, namespace) of each demo run, checked clean after the test."""
    runs: list[tuple[str, str]] = []
    yield runs
    for kind, namespace in runs:
        assert left_on(kind, namespace, ["triage"]) == [], (kind, namespace)


# -- a run through each broker -------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("kind", "workers"), [("redis", 2), ("nats", 1), ("rabbit", 1)])
def test_the_demo_through_a_broker_counts_what_the_in_process_demo_does(
    kind: str,
    workers: int,
    backend: str,
    in_process: DemoReport,
    demo_namespaces: list[tuple[str, str]],
) -> None:
    url = require(kind)
    proc = run_demo_command(
        *SETTINGS, "--broker", url, "--workers", str(workers), "--backend", backend
    )
    namespace, pids = started_workers(proc.stdout)
    demo_namespaces.append((kind, namespace))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    assert len(pids) == workers
    assert_gone(pids)

    rows = summary(proc.stdout)
    assert rows["Tasks"] == "40"
    assert rows["Succeeded"] == str(in_process.succeeded)
    assert rows["Failed"] == str(len(in_process.failures))
    # The workers' failures come back by their own type names, as in-process.
    assert {name: int(rows[name]) for name in in_process.error_types} == dict(
        in_process.error_types
    )
    tokens = in_process.input_tokens + in_process.output_tokens
    assert rows["Tokens"].startswith(f"{tokens:,} (")
    assert rows["Backend"].startswith(backend)
    assert rows["Backend"].endswith("workers on uvloop)")  # the dev install has uvloop
    assert rows["Broker"] == url.replace("guest:guest", "guest:***")
    assert rows["Workers"] == f"{workers} local process{'' if workers == 1 else 'es'}"
    per_worker = {name: value for name, value in rows.items() if name.startswith("demo-worker-")}
    assert sorted(per_worker) == [f"demo-worker-{i + 1}" for i in range(workers)]
    assert sum(int(value.removesuffix(" tasks")) for value in per_worker.values()) == 40
    assert f"deleted namespace {namespace}" in " ".join(proc.stdout.split())


# -- every way out stops the workers ------------------------------------------------------


class RunningDemo:
    """``murmur demo --broker`` in a subprocess, its stdout read until the workers started."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            demo_command(*args),
            cwd=REPO,
            env=command_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.head = ""

    def wait_started(self) -> tuple[str, list[int]]:
        """Blocks until the demo says which workers it started (then they take tasks)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.head += line
            if "Fanning out" in line:  # printed once the workers have started
                return started_workers(self.head)
        raise AssertionError(f"the demo ended first: {self.finish()}")

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=STEP_SECONDS * 3)
        return self.proc.returncode, self.head + out, err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@pytest.fixture(params=BACKENDS)
def mid_run(
    request: pytest.FixtureRequest, demo_namespaces: list[tuple[str, str]]
) -> Iterator[tuple[RunningDemo, list[int]]]:
    """A demo on Redis, on each backend, whose workers have started, and their pids; far
    more tasks than run before the test acts, so it acts mid-run."""
    demo = RunningDemo(
        "--tasks", "100000", "--broker", require("redis"), "--backend", request.param
    )
    try:
        namespace, pids = demo.wait_started()
        demo_namespaces.append(("redis", namespace))
        yield demo, pids
    finally:
        demo.close()


def test_ctrl_c_stops_the_workers_and_deletes_the_namespace(
    mid_run: tuple[RunningDemo, list[int]],
) -> None:
    demo, pids = mid_run
    demo.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the demo (not its workers)
    code, out, err = demo.finish()
    assert code == 130, out + err
    assert "Interrupted." in out
    assert "Traceback" not in err
    assert_gone(pids)


def test_a_worker_that_dies_mid_run_ends_the_demo_with_one_line(
    mid_run: tuple[RunningDemo, list[int]],
) -> None:
    demo, pids = mid_run
    os.kill(pids[0], signal.SIGKILL)  # the demo's worker, started for this test
    code, out, err = demo.finish()
    assert code == 1, out + err
    assert err.splitlines() == [
        "error: the demo's worker demo-worker-1 stopped: it was killed by SIGKILL"
    ]
    assert_gone(pids)


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:1",
        "nats://127.0.0.1:1",
        "amqp://guest:hunter2@127.0.0.1:1/",
    ],
)
def test_an_unreachable_broker_is_one_line_naming_it(url: str) -> None:
    # Port 1 on the loopback: nothing listens there, the connection is refused at once.
    proc = run_demo_command("--tasks", "5", "--broker", url)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: cannot connect to broker ")
    assert url.replace("hunter2", "***") in lines[0]
    assert "hunter2" not in proc.stdout + proc.stderr
    assert "Started" not in proc.stdout  # no worker ever ran: nothing to stop


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "100"})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("kafka://localhost:9092", "does not support Kafka"),
        ("memory://", "processes of their own"),
        ("mqtt://localhost", "accepted: redis://"),
    ],
)
def test_a_broker_the_demo_cannot_use_is_a_usage_error(url: str, expected: str) -> None:
    result = invoke("demo", "--broker", url)
    assert result.exit_code == 2
    output = " ".join(_ANSI.sub("", result.output).replace("│", " ").split())
    assert "Invalid value for '--broker'" in output
    assert expected in output


def test_demo_help_describes_the_broker_mode() -> None:
    result = invoke("demo", "--help")
    assert result.exit_code == 0
    text = " ".join(_ANSI.sub("", result.output).replace("│", " ").split())
    for expected in (
        "--broker URL",
        "--workers",
        "redis://, nats:// or amqp://",
        "murmur demo --broker redis://localhost:6379 --workers 2",
        "counts the tasks each worker ran",
    ):
        assert expected in text, expected
