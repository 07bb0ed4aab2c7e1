"""LogEventEmitter: through structlog when it is configured, else standard logging; never stdout."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import structlog

from murmur import AgentRuntime, EventType, LogEventEmitter, RuntimeEvent, TaskSpec, Usage
from murmur.events import EventError
from murmur.events.log import log_exception

pytestmark = pytest.mark.anyio

WARNING_TYPES = frozenset(
    {
        EventType.TASK_FAILED,
        EventType.ATTEMPT_TIMED_OUT,
        EventType.BUDGET_EXCEEDED,
        EventType.DEPTH_LIMIT_EXCEEDED,
    }
)


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


@pytest.fixture(autouse=True)
def _structlog_unconfigured() -> Iterator[None]:
    """Each test starts with structlog unconfigured (``capture_logs`` elsewhere leaves it
    configured), and whatever was there before is put back afterwards."""
    was_configured, saved = structlog.is_configured(), structlog.get_config()
    structlog.reset_defaults()
    try:
        yield
    finally:
        structlog.reset_defaults()
        if was_configured:
            structlog.configure(**saved)


@contextmanager
def unconfigured_logging() -> Iterator[None]:
    """A program that set up no logging at all (pytest's own handlers set aside)."""
    root = logging.getLogger()
    murmur_logger = logging.getLogger("murmur")
    saved = root.handlers[:], root.level, murmur_logger.level
    root.handlers = []
    root.setLevel(logging.WARNING)
    murmur_logger.setLevel(logging.NOTSET)
    try:
        yield
    finally:
        root.handlers = saved[0]
        root.setLevel(saved[1])
        murmur_logger.setLevel(saved[2])


def murmur_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("murmur")]


async def echo(x: Any) -> Any:
    return x


async def fails(x: Any) -> Any:
    raise ValueError("nope")


async def batch_and_failure(runtime: AgentRuntime) -> None:
    await runtime.gather(echo, [TaskSpec(input=i) for i in range(2)])
    await runtime.run(fails, TaskSpec(input=1, task_id="f"))


# -- structlog configured: events go through it -----------------------------------------


async def test_default_runtime_logs_batches_and_failures(
    sink: list[dict[str, Any]], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger="murmur")
    async with AgentRuntime() as rt:
        await batch_and_failure(rt)
    names = [e["event"] for e in sink]
    assert names == ["batch.started", "batch.completed", "task.failed"]
    failed = sink[-1]
    assert failed["level"] == "warning"
    assert failed["task_id"] == "f"
    assert failed["error"] == {"type": "ValueError", "message": "nope"}
    assert sink[0]["level"] == "info"
    # Through structlog only: not also through standard logging, and never on stdout.
    assert murmur_records(caplog) == []
    assert capfd.readouterr().out == ""


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
        assert LogEventEmitter().event_types() == WARNING_TYPES
        assert LogEventEmitter(min_level=logging.DEBUG).event_types() == WARNING_TYPES
    finally:
        structlog.reset_defaults()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        assert EventType.TASK_STARTED in LogEventEmitter(min_level=logging.DEBUG).event_types()
        assert EventType.TASK_STARTED not in LogEventEmitter().event_types()
    finally:
        structlog.reset_defaults()


# -- structlog not configured: standard logging, logger "murmur.events" ------------------


async def test_unconfigured_only_warnings_reach_stderr_and_nothing_reaches_stdout(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with unconfigured_logging():
        async with AgentRuntime() as rt:
            await batch_and_failure(rt)
    out, err = capfd.readouterr()
    assert out == ""
    # logging's last resort prints the bare message of warnings and above to stderr.
    (line,) = err.splitlines()
    assert line.startswith("task.failed ")
    assert " task_id=f " in line
    assert " agent=fails " in line
    assert ' error={"type":"ValueError","message":"nope"}' in line


def test_unconfigured_logging_wants_only_warnings_and_nothing_when_switched_off() -> None:
    with unconfigured_logging():
        assert LogEventEmitter().event_types() == WARNING_TYPES
        assert LogEventEmitter(min_level=logging.DEBUG).event_types() == WARNING_TYPES
        logging.getLogger("murmur").setLevel(logging.CRITICAL)
        # Nothing is wanted, so the runtime builds no event at all.
        assert LogEventEmitter().event_types() == frozenset()


async def test_configured_logging_receives_records_with_their_fields(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="murmur")
    async with AgentRuntime() as rt:
        await batch_and_failure(rt)
    records = murmur_records(caplog)
    assert [(r.name, r.levelno, r.event_type) for r in records] == [  # type: ignore[attr-defined]
        ("murmur.events", logging.INFO, "batch.started"),
        ("murmur.events", logging.INFO, "batch.completed"),
        ("murmur.events", logging.WARNING, "task.failed"),
    ]
    started, completed, failed = records
    assert started.getMessage().startswith("batch.started ")
    assert started.data["size"] == 2  # type: ignore[attr-defined]
    assert ' data={"size":2,"succeeded":2,"failed":0}' in completed.getMessage()
    assert completed.data == {"size": 2, "succeeded": 2, "failed": 0}  # type: ignore[attr-defined]
    assert failed.task_id == "f"  # type: ignore[attr-defined]
    assert failed.agent == "fails"  # type: ignore[attr-defined]
    assert failed.attempt == 1  # type: ignore[attr-defined]
    assert failed.error == {"type": "ValueError", "message": "nope"}  # type: ignore[attr-defined]
    assert capfd.readouterr().out == ""


async def test_per_task_events_need_both_the_logger_and_min_level_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="murmur")
    async with AgentRuntime() as rt:
        await rt.run(echo, TaskSpec(input=1))
    assert murmur_records(caplog) == []
    async with AgentRuntime(event_emitter=LogEventEmitter(min_level=logging.DEBUG)) as rt:
        await rt.run(echo, TaskSpec(input=1, task_id="t"))
    records = murmur_records(caplog)
    assert [(r.getMessage().split()[0], r.levelno) for r in records] == [
        ("task.started", logging.DEBUG),
        ("task.succeeded", logging.DEBUG),
    ]
    assert all(r.task_id == "t" for r in records)  # type: ignore[attr-defined]


async def test_a_given_logging_logger_is_used_even_with_structlog_configured(
    sink: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app")
    emitter = LogEventEmitter(logger=logging.getLogger("app.agents"))
    async with AgentRuntime(event_emitter=emitter) as rt:
        await rt.run(fails, TaskSpec(input=1, task_id="f"))
    (record,) = [r for r in caplog.records if r.name == "app.agents"]
    assert record.event_type == "task.failed"  # type: ignore[attr-defined]
    assert sink == []


async def test_every_field_reaches_the_record_and_the_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="murmur")
    event = RuntimeEvent(
        type=EventType.TASK_FAILED,
        timestamp=1.5,
        trace_id="tr",
        task_id="t1",
        parent_task_id="t0",
        call_id="c1",
        parent_call_id="c0",
        agent="my agent",
        depth=1,
        attempt=2,
        duration=0.25,
        usage=Usage(input_tokens=3, output_tokens=4),
        error=EventError(type="ValueError", message="bad = worse"),
        data={"note": "x"},
    )
    await LogEventEmitter().emit(event)
    (record,) = murmur_records(caplog)
    assert record.getMessage() == (
        "task.failed trace_id=tr task_id=t1 parent_task_id=t0 call_id=c1 parent_call_id=c0 "
        'agent="my agent" depth=1 attempt=2 duration=0.25 '
        'usage={"input_tokens":3,"output_tokens":4,"requests":0,"tool_calls":0} '
        'error={"type":"ValueError","message":"bad = worse"} data={"note":"x"}'
    )
    dumped = event.model_dump(mode="json", exclude={"type"})
    assert {key: getattr(record, key) for key in dumped} == dumped
    assert record.event_type == "task.failed"  # type: ignore[attr-defined]


# -- the runtime's own trouble ------------------------------------------------------------


def test_log_exception_unconfigured_goes_to_stderr_with_its_traceback(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with unconfigured_logging():
        try:
            raise RuntimeError("emitter down")
        except RuntimeError:
            log_exception("event emitter failed", emitter="Broken", event_type="task.failed")
    out, err = capfd.readouterr()
    assert out == ""
    assert err.startswith("event emitter failed emitter=Broken event_type=task.failed\n")
    assert "Traceback" in err
    assert "RuntimeError: emitter down" in err


def test_log_exception_goes_through_structlog_when_configured(
    sink: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="murmur")
    try:
        raise RuntimeError("emitter down")
    except RuntimeError:
        log_exception("event emitter failed", emitter="Broken")
    (entry,) = sink
    assert entry["event"] == "event emitter failed"
    assert entry["emitter"] == "Broken"
    assert entry["level"] == "error"
    assert murmur_records(caplog) == []
