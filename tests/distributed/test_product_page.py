"""The product page's "Going distributed", as written, on the local Redis, NATS and RabbitMQ,
with workers started by the real ``murmur worker start`` command.

    runtime = AgentRuntime(broker="kafka://kafka.prod:9092")
    murmur worker start --agents researcher --broker kafka://kafka.prod:9092 --concurrency 20

Only the page's URL is replaced, by the local server's (the page's own runs on
``in_memory_kafka()``: test_product_page_kafka.py). The worker serves the app
``MURMUR_APP`` names (the page's crew, tests/distributed/research_app.py), in the
namespace ``MURMUR_NAMESPACE`` names, which the page's runtime line reads too. A second
worker, started by the same line serving the whole crew, runs the page's group snippet
(researcher -> reviewer -> summariser), its pydantic-ai agents wrapped by
``from_pydantic_ai``.
"""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from distributed import research_app
from distributed.brokers import cleanup, require
from distributed.test_product_page_kafka import PAGE_RUNTIME, PAGE_WORKER
from murmur import AgentGroup, AgentRuntime, Edge, TaskSpec, from_pydantic_ai
from support import exec_snippet
from test_seed_snippets import GROUP_AFTER
from workers import WorkerProcess, command_env

pytestmark = pytest.mark.anyio

PAGE_URL = "kafka://kafka.prod:9092"
CREW = ("researcher", "reviewer", "summariser")
#: A bound on each step: a broken transport fails the test instead of hanging it.
HANG = 20.0


def on(line: str, url: str) -> str:
    """The page's ``line`` with the local server's URL for the page's."""
    assert line.count(PAGE_URL) == 1
    return line.replace(PAGE_URL, url)


def start(line: str, namespace: str) -> WorkerProcess:
    """``line`` (``murmur worker start ...``) as a process, with the page's app."""
    argv = shlex.split(line)
    assert argv[:3] == ["murmur", "worker", "start"]
    return WorkerProcess(
        *argv[3:],
        "--log-format",
        "json",  # to know when it consumes (the page's line logs for a console)
        env=command_env(MURMUR_APP="distributed.research_app", MURMUR_NAMESPACE=namespace),
    )


@dataclass(frozen=True)
class Page:
    url: str
    #: Where the page's worker (``--agents researcher``) serves.
    namespace: str
    #: Where the worker serving the whole crew serves.
    crew_namespace: str


@pytest.fixture(scope="module", params=["redis", "nats", "rabbit"])
def page(request: pytest.FixtureRequest) -> Iterator[Page]:
    """The page's worker line, and the same line serving the crew, running on one broker
    (for both caller backends); stopped as a supervisor would (SIGTERM, exit 0)."""
    kind = request.param
    url = require(kind)
    spec = Page(url, f"page-{uuid.uuid4().hex[:8]}", f"page-crew-{uuid.uuid4().hex[:8]}")
    worker_line = on(PAGE_WORKER, url)
    crew_line = worker_line.replace("--agents researcher", f"--agents {','.join(CREW)}")
    assert crew_line != worker_line
    workers = [start(worker_line, spec.namespace), start(crew_line, spec.crew_namespace)]
    try:
        for worker, agents in zip(workers, (["researcher"], sorted(CREW)), strict=True):
            started = worker.next_event("worker.started")
            assert (started["agents"], started["concurrency"]) == (agents, 20)
        yield spec
        for worker in workers:
            code = worker.stop()
            assert code == 0, f"the worker did not drain and exit 0:\n{worker.output()}"
    finally:
        for worker in workers:
            worker.close()
        for namespace in (spec.namespace, spec.crew_namespace):
            cleanup(kind, namespace, CREW)


async def the_pages_runtime(url: str) -> AgentRuntime:
    page = await exec_snippet(on(PAGE_RUNTIME, url), {"AgentRuntime": AgentRuntime})
    runtime: AgentRuntime = page["runtime"]
    return runtime


async def test_the_pages_worker_serves_the_pages_runtime(
    page: Page, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MURMUR_NAMESPACE", page.namespace)
    questions = [TaskSpec(input=f"question {i}") for i in range(20)]
    with anyio.fail_after(HANG):
        async with await the_pages_runtime(page.url) as runtime:
            results = await runtime.gather(research_app.researcher, questions)
    assert [r.output for r in results] == [f"research(question {i})" for i in range(20)]
    assert all(r.usage.total_tokens == 15 for r in results)


async def test_the_pages_crew_runs_on_a_worker_serving_all_three(
    page: Page, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MURMUR_NAMESPACE", page.crew_namespace)
    crew: dict[str, Any] = {
        name: from_pydantic_ai(getattr(research_app, name)) for name in CREW
    }  # named as the worker serves them: researcher, reviewer, summariser
    with anyio.fail_after(HANG):
        async with await the_pages_runtime(page.url) as runtime:
            snippet = {"AgentGroup": AgentGroup, "Edge": Edge, "TaskSpec": TaskSpec, **crew}
            snippet |= {"runtime": runtime, "question": "why is the sky blue?"}
            result = (await exec_snippet(GROUP_AFTER, snippet))["result"]
    assert result.output == "summary(review(research(why is the sky blue?)))"
    assert result.status == dict.fromkeys(CREW, "succeeded")
    assert result.usage.total_tokens == 45
