"""The product page's "Going distributed", on ``kafka://`` as written, through FastStream's
test broker (no Kafka server can run where Murmur is developed).

    runtime = AgentRuntime(broker="kafka://kafka.prod:9092")
    murmur worker start --agents researcher --broker kafka://kafka.prod:9092 --concurrency 20

The worker command is the real ``murmur worker start`` (the app named by ``MURMUR_APP``),
run in this process's main thread, as its signal handling requires; the caller runs the
page's line on another thread with its own event loop, both on one in-memory Kafka. The
caller ends the worker as a process supervisor would: SIGTERM, drained, exit code 0.
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
import uuid
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner

from distributed.research_app import researcher
from murmur import AgentRuntime, TaskSpec
from murmur.cli import app
from murmur.distributed._kafka import in_memory_kafka
from support import exec_snippet

PAGE_RUNTIME = 'runtime = AgentRuntime(broker="kafka://kafka.prod:9092")\n'
PAGE_WORKER = (
    "murmur worker start --agents researcher --broker kafka://kafka.prod:9092 --concurrency 20"
)


@pytest.mark.parametrize("caller_backend", ["asyncio", "trio"])
def test_the_pages_kafka_snippets_run_as_written(
    caller_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MURMUR_APP", "distributed.research_app")
    monkeypatch.setenv("MURMUR_NAMESPACE", f"page-{uuid.uuid4().hex[:8]}")
    outcome: dict[str, Any] = {}

    async def caller() -> None:
        page = await exec_snippet(PAGE_RUNTIME, {"AgentRuntime": AgentRuntime})
        async with page["runtime"] as runtime:
            questions = [TaskSpec(input=f"question {i}") for i in range(20)]
            outcome["results"] = await runtime.gather(researcher, questions)

    worker_done = threading.Event()

    def call_then_stop_the_worker() -> None:
        try:
            anyio.run(caller, backend=caller_backend)
        except BaseException as exc:  # reported by the test below
            outcome["error"] = exc
        finally:
            # The worker drains and exits 0. Only if the caller failed before the worker
            # listened for signals is one lost (to the handler below): then send again.
            os.kill(os.getpid(), signal.SIGTERM)
            while not worker_done.wait(1.0):
                os.kill(os.getpid(), signal.SIGTERM)

    argv = shlex.split(PAGE_WORKER)
    assert argv[:1] == ["murmur"]
    # A SIGTERM outside the worker's own handling must not end the test run.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    with in_memory_kafka():
        thread = threading.Thread(target=call_then_stop_the_worker)
        thread.start()
        try:
            result = CliRunner().invoke(app, [*argv[1:], "--log-format", "json"])
        finally:
            worker_done.set()
            thread.join()
            signal.signal(signal.SIGTERM, previous)
    assert "error" not in outcome, outcome.get("error")
    assert result.exit_code == 0, result.output
    results = outcome["results"]
    assert [r.output for r in results] == [f"research(question {i})" for i in range(20)]
    assert all(r.usage.total_tokens == 15 for r in results)
