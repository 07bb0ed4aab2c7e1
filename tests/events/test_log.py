"""LogEventEmitter writes through structlog, into the sink the user configured."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from murmur import AgentRuntime, EventType, LogEventEmitter, TaskSpec

pytestmark = pytest.mark.anyio


@pytest.fixture
def sink() -> Iterator[list[dict[str, Any]]]:
    """A user's own structlog configuration: a custom processor chain rendering JSON."""
    captured: list[dict[str, Any]] = []
    out = io.StringIO()

    def keep(_: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        captured.append({**event_dict, "_method": method})
        return event_dict

    structlog.configure(
        processors=[structlog.processors.add_log_level, keep, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=out),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=False,
    )
    try:
        yield captured
        # Every captured entry was also rendered to the user's sink as JSON.
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [line["event"] for line in lines] == [e["event"] for e in captured]
    finally:
        structlog.reset_defaults()


async def echo(x: Any) -> Any:
    return x


async def fails(x: Any) -> Any:
    raise ValueError("nope")


async def test_default_runtime_logs_batches_and_failures(sink: list[dict[str, Any]]) -> None:
    async with AgentRuntime() as rt:
        await rt.gather(echo, [TaskSpec(input=i) for i in range(2)])
        await rt.run(fails, TaskSpec(input=1, task_id="f"))
    names = [e["event"] for e in sink]
    assert names == ["batch.started", "batch.completed", "task.failed"]
    failed = sink[-1]
    assert failed["level"] == "warning"
    assert failed["task_id"] == "f"
    assert failed["error"] == {"type": "ValueError", "message": "nope"}
    assert sink[0]["level"] == "info"


async def test_debug_min_level_adds_per_task_events(sink: list[dict[str, Any]]) -> None:
    async with AgentRuntime(event_emitter=LogEventEmitter(min_level=logging.DEBUG)) as rt:
        await rt.run(echo, TaskSpec(input=1))
    assert [e["event"] for e in sink] == ["task.started", "task.succeeded"]
    assert all(e["level"] == "debug" for e in sink)


async def test_level_overrides(sink: list[dict[str, Any]]) -> None:
    emitter = LogEventEmitter(levels={EventType.TASK_SUCCEEDED: logging.ERROR})
    async with AgentRuntime(event_emitter=emitter) as rt:
        await rt.run(echo, TaskSpec(input=1))
    assert [(e["event"], e["level"]) for e in sink] == [("task.succeeded", "error")]


def test_structlog_filtering_decides_what_is_built() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        wanted = LogEventEmitter().event_types()
    finally:
        structlog.reset_defaults()
    assert EventType.TASK_FAILED in wanted
    assert EventType.BUDGET_EXCEEDED in wanted
    assert EventType.BATCH_STARTED not in wanted
    assert EventType.TASK_STARTED not in wanted
    assert EventType.TASK_STARTED in LogEventEmitter(min_level=logging.DEBUG).event_types()
