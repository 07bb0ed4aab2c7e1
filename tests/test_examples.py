"""The scripts of examples/ run as a user runs them (a subprocess each), offline, on asyncio
and on Trio, and print what they promise. The distributed one runs against the local Redis
with a real ``murmur worker start`` process, in a namespace of its own, deleted afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from distributed.brokers import delete_redis_keys, require
from workers import REPO, WorkerProcess, command_env

BACKENDS = ["asyncio", "trio"]
EXAMPLES = REPO / "examples"
#: A bound on one script (a broken example fails instead of hanging the suite).
SCRIPT_SECONDS = 60


def run_example(script: str, backend: str, **env: str) -> str:
    """Run ``examples/<script> --backend <backend>``; its stdout (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--backend", backend],
        cwd=REPO,
        env=command_env(**env),
        capture_output=True,
        text=True,
        timeout=SCRIPT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_quickstart(backend: str) -> None:
    out = run_example("quickstart.py", backend, MURMUR_EXAMPLE_MODEL="")
    assert out.splitlines() == [
        "review-0 positive 60 tokens",
        "review-1 negative 60 tokens",
        "review-2 positive 62 tokens",
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fan_out_with_partial_failures(backend: str) -> None:
    out = run_example("fan_out.py", backend)
    assert "20 results, 17 ok, 3 failed, peak in flight 5" in out
    assert "  rec-7: ConnectionError: provider reset the connection for record 7" in out
    assert "failures by type: {'ConnectionError': 2, 'ValueError': 1}" in out
    assert "tokens: 2040" in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_retry_timeout_and_budget(backend: str) -> None:
    out = run_example("policies.py", backend)
    assert "retry: HELLO after 3 attempts" in out
    assert "timeout: AgentTimeoutError after 2 attempts" in out
    assert "budget: ['answer(q0)', 'answer(q1)', 'answer(q2)', 'BudgetExceededError'," in out
    assert "exhausted=True" in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_group_with_fan_out_and_a_conditional_edge(backend: str) -> None:
    out = run_example("group.py", backend)
    assert "  escalation: escalated: bridge: risk" in out
    assert "  summariser: 2 findings: mars base: cost; mars base: risk" in out
    assert "'escalation': 'pruned'" in out
    assert "  failed slots: {'analyst': [2]}" in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_live_events_over_sse(backend: str) -> None:
    out = run_example("sse_live.py", backend)
    assert "client connected: 200 text/event-stream; charset=utf-8" in out
    assert "client saw a failure: t2 unreadable ticket" in out
    assert (
        "client received: {'batch.completed': 1, 'batch.started': 1, 'task.failed': 1, "
        "'task.started': 5, 'task.succeeded': 4}"
    ) in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_distributed_with_a_worker_on_redis(backend: str) -> None:
    url = require("redis")
    namespace = f"examples-{uuid.uuid4().hex[:8]}"
    app_path = os.pathsep.join((str(REPO / "src"), str(EXAMPLES / "distributed")))
    worker = WorkerProcess(
        "--app",
        "research",
        "--broker",
        url,
        "--log-format",
        "json",
        env=command_env(PYTHONPATH=app_path, MURMUR_NAMESPACE=namespace, MURMUR_EXAMPLE_MODEL=""),
    )
    try:
        started = worker.next_event("worker.started")
        assert started["agents"] == ["researcher", "shout"]
        out = run_example(
            "distributed/caller.py", backend, MURMUR_BROKER=url, MURMUR_NAMESPACE=namespace
        )
        assert "10 of 10 ok; DONE" in out
        assert "tasks per worker: 1 worker(s), 11 tasks" in out
        assert "notes on 'question 0'" in out
        assert worker.stop() == 0, worker.output()
    finally:
        worker.close()
        delete_redis_keys(namespace, url)


def test_the_deploy_files_use_real_worker_options() -> None:
    """examples/deploy/ is not run here (no Docker), but every option its worker commands
    pass is one ``murmur worker start`` accepts, and the files say what the guide says."""
    import re

    import typer.main

    from murmur.cli import app

    start = typer.main.get_command(app).commands["worker"].commands["start"]  # type: ignore[attr-defined]
    accepted = {opt for param in start.params for opt in param.opts}
    deploy = EXAMPLES / "deploy"
    for name in ("Dockerfile", "compose.yaml", "murmur-worker@.service"):
        text = (deploy / name).read_text()
        used = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", text))
        used -= {"--build", "--scale", "--appendonly", "--appendfsync", "--system", "--uid"}
        assert used, name
        assert used <= accepted, f"{name}: {sorted(used - accepted)} not worker options"
    dockerfile = (deploy / "Dockerfile").read_text()
    assert "STOPSIGNAL SIGTERM" in dockerfile
    assert "COPY examples/distributed/research.py" in dockerfile
    compose = (deploy / "compose.yaml").read_text()
    grace = int(re.search(r'"--grace", "(\d+)"', compose)[1])  # type: ignore[index]
    stop = int(re.search(r"stop_grace_period: (\d+)s", compose)[1])  # type: ignore[index]
    assert stop > grace
