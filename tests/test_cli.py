"""The ``murmur`` command line: ``demo`` (in-process and as a real subprocess), ``version``,
``--version``, and ``murmur`` alone.

The demo is deterministic by construction (every call depends only on the seed and the
ticket id), so these tests assert exact counts and never anything about wall-clock time.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner

from murmur import AgentRuntime, TaskSpec, __version__
from murmur.cli import app
from murmur.cli._demo import (
    DemoConfig,
    LiveMonitor,
    Triage,
    failure_kind,
    make_tickets,
    run_demo,
)

BACKENDS = ["asyncio", "trio"]
# 20 tasks, one failure in 5: tickets 5, 10, 15, 20 fail, cycling through the kinds.
SMALL = ["demo", "--tasks", "20", "--concurrency", "5", "--fail-every", "5", "--seed", "3"]
EXPECTED_ERRORS = {
    "ModelRateLimitError": 2,
    "ModelOverloadedError": 1,
    "UnexpectedModelBehavior": 1,
}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "100"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def summary(output: str) -> dict[str, str]:
    """The rows of the summary table, as {metric: value} (wrapped continuations dropped)."""
    rows: dict[str, str] = {}
    for line in _ANSI.sub("", output).splitlines():
        if "│" not in line:
            continue
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if len(cells) == 2 and cells[0]:
            rows[cells[0]] = cells[1]
    return rows


def check_small_summary(output: str, backend: str) -> dict[str, str]:
    rows = summary(output)
    assert rows["Tasks"] == "20"
    assert rows["Succeeded"] == "16"
    assert rows["Failed"] == "4"
    errors = {name: int(rows[name]) for name in EXPECTED_ERRORS}
    assert errors == EXPECTED_ERRORS
    assert int(rows["Succeeded"]) + sum(errors.values()) == int(rows["Tasks"])
    peak = re.fullmatch(r"(\d+) \(cap 5\)", rows["Peak concurrency"])
    assert peak is not None, rows["Peak concurrency"]
    assert 1 <= int(peak.group(1)) <= 5
    assert rows["Backend"].startswith(backend)
    assert re.fullmatch(r"[\d,]+ \([\d,]+ in / [\d,]+ out, [\d,]+ requests\)", rows["Tokens"])
    return rows


# -- murmur demo, in-process ---------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_demo_summary_counts_successes_and_failures(backend: str) -> None:
    result = invoke(*SMALL, "--backend", backend)
    assert result.exit_code == 0, result.output
    check_small_summary(result.output, backend)
    # Failures are data: the failed tickets are listed by task id, with their error type.
    assert "First 3 of 4 failures" in result.output
    for task_id in ("ticket-00005", "ticket-00010", "ticket-00015"):
        assert task_id in result.output


def test_demo_is_deterministic_across_backends() -> None:
    asyncio_rows = summary(invoke(*SMALL, "--backend", "asyncio").output)
    trio_rows = summary(invoke(*SMALL, "--backend", "trio").output)
    for metric in ("Tasks", "Succeeded", "Failed", "Tokens", *EXPECTED_ERRORS):
        assert asyncio_rows[metric] == trio_rows[metric], metric


def test_demo_without_failures() -> None:
    result = invoke("demo", "--tasks", "12", "--concurrency", "4", "--fail-every", "0")
    assert result.exit_code == 0, result.output
    rows = summary(result.output)
    assert (rows["Tasks"], rows["Succeeded"], rows["Failed"]) == ("12", "12", "0")
    assert "Failures are data" not in result.output


def test_demo_every_call_failing_still_returns_every_result() -> None:
    result = invoke("demo", "--tasks", "6", "--concurrency", "6", "--fail-every", "1")
    assert result.exit_code == 0, result.output
    rows = summary(result.output)
    assert (rows["Tasks"], rows["Succeeded"], rows["Failed"]) == ("6", "0", "6")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--tasks", "0"], "--tasks"),
        (["--tasks", "many"], "--tasks"),
        (["--concurrency", "0"], "--concurrency"),
        (["--concurrency", "-4"], "--concurrency"),
        (["--fail-every", "-1"], "--fail-every"),
        (["--backend", "curio"], "--backend"),
        (["--seed", "1.5"], "--seed"),
    ],
)
def test_demo_rejects_bad_option_values(args: list[str], option: str) -> None:
    result = invoke("demo", *args)
    assert result.exit_code == 2
    output = _ANSI.sub("", result.output)
    assert "Invalid value" in output
    assert f"'{option}'" in output


def test_demo_backend_trio_without_trio_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == "trio" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    result = invoke("demo", "--tasks", "1", "--backend", "trio")
    assert result.exit_code == 2
    output = _ANSI.sub("", result.output)
    assert "'--backend'" in output
    assert "murmur-agents[trio]" in output


# -- help and version ----------------------------------------------------------------------


def test_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    assert "demo" in result.output
    assert "version" in result.output


def test_demo_help_lists_the_options() -> None:
    result = invoke("demo", "--help")
    assert result.exit_code == 0
    for option in ("--tasks", "--concurrency", "--backend", "--seed", "--fail-every"):
        assert option in result.output


def test_version() -> None:
    result = invoke("version")
    assert result.exit_code == 0
    assert result.output.startswith(f"murmur {__version__} ")


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_flag(flag: str) -> None:
    result = invoke(flag)
    assert result.exit_code == 0
    assert result.output == invoke("version").output
    # Eager: it answers before any command runs (the demo here would take seconds).
    assert invoke(flag, "demo").output == result.output


def test_murmur_alone_prints_the_help_and_succeeds() -> None:
    result = invoke()
    assert result.exit_code == 0
    assert result.output == invoke("--help").output
    assert "Usage" in result.output
    for command in ("demo", "version", "--version"):
        assert command in result.output


# -- the demo's parts ----------------------------------------------------------------------


def test_tickets_and_failures_depend_only_on_seed_and_id() -> None:
    assert make_tickets(5, seed=1) == make_tickets(5, seed=1)
    assert make_tickets(5, seed=1) != make_tickets(5, seed=2)
    assert [t.id for t in make_tickets(3, seed=0)] == [1, 2, 3]
    kinds = [failure_kind(i, 5) for i in range(1, 21)]
    assert [k for k in kinds if k is not None] == [
        "rate-limit",
        "overloaded",
        "malformed-output",
        "rate-limit",
    ]
    assert all(failure_kind(i, 0) is None for i in range(1, 50))


@pytest.mark.anyio
async def test_run_demo_report_matches_the_monitor() -> None:
    monitor = LiveMonitor()
    config = DemoConfig(tasks=15, concurrency=4, seed=7, fail_every=4, latency=0.0)
    report = await run_demo(config, monitor)
    assert [r.task_id for r in report.results] == [f"ticket-{i:05d}" for i in range(1, 16)]
    assert report.succeeded == monitor.succeeded == 12
    assert len(report.failures) == monitor.failed == 3
    assert monitor.in_flight == 0
    assert 1 <= report.peak_concurrency <= 4
    for result in report.results:
        ticket_id = int(result.task_id.removeprefix("ticket-"))
        assert result.is_ok() == (failure_kind(ticket_id, 4) is None)
        if result.is_ok():
            assert isinstance(result.output, Triage)
            assert result.output.priority in range(1, 6)
            assert result.usage.total_tokens > 0


@pytest.mark.anyio
async def test_live_monitor_does_not_count_cancelled_tasks() -> None:
    monitor = LiveMonitor()
    never = anyio.Event()

    async def stuck(value: int) -> int:
        await never.wait()
        return value

    async with AgentRuntime(middleware=[monitor]) as runtime, anyio.create_task_group() as tg:

        async def batch() -> None:
            await runtime.gather(stuck, [TaskSpec(input=i) for i in range(3)])

        tg.start_soon(batch)
        while monitor.in_flight < 3:
            await anyio.sleep(0)
        tg.cancel_scope.cancel()
    assert (monitor.in_flight, monitor.peak_in_flight) == (0, 3)
    assert (monitor.succeeded, monitor.failed) == (0, 0)


# -- a real process ------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "100", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        args, capture_output=True, text=True, encoding="utf-8", env=env, timeout=300, check=False
    )


def test_demo_as_a_subprocess() -> None:
    script = Path(sys.executable).with_name("murmur")
    if script.exists():  # the console script, as a user runs it
        command = [str(script), *SMALL]
    else:
        command = [sys.executable, "-m", "murmur.cli", *SMALL]
    proc = _run(*command)
    assert proc.returncode == 0, proc.stderr
    check_small_summary(proc.stdout, "asyncio")


def test_python_dash_m_murmur() -> None:
    proc = _run(sys.executable, "-m", "murmur", "demo", "--tasks", "0")
    assert proc.returncode == 2
    assert "'--tasks'" in _ANSI.sub("", proc.stderr)
    proc = _run(sys.executable, "-m", "murmur", "version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"murmur {__version__} ")
    proc = _run(sys.executable, "-m", "murmur", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"murmur {__version__} ")
    proc = _run(sys.executable, "-m", "murmur")
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout
