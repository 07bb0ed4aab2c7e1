"""What ``murmur worker start`` runs: import the app, start a ``Worker``, report, stop on signals.

Errors at start are one line on stderr (``error: ...``, never a traceback): exit code 2
for usage problems, 1 when the broker cannot be reached. The worker's own events go
through its ``event_emitter`` to one of three reporters on stderr: JSON lines, plain
console lines, or (on a terminal) a live rich status line.
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import anyio.abc

from ..distributed._adapter import load_adapter
from ..distributed._registry import AgentRegistry
from ..distributed._url import parse_broker_url
from ..distributed._worker import Worker
from ..errors import BrokerUnavailableError, InvalidValueError, MissingDependencyError
from ..middleware.rate_limit import RateLimitMiddleware
from ._rate_limits import parse_rate_limits

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from ..events.types import RuntimeEvent

__all__ = ["StartOptions", "run_worker"]

#: Exit codes: a usage problem (bad option, app, agent or URL), or the broker/worker failed.
USAGE = 2
FAILED = 1
STOP_REQUESTED = "worker.stop_requested"
#: How often the live status line is redrawn, and the window its tasks/s is measured over.
_REFRESH_SECONDS = 0.25
_RATE_WINDOW = 5.0


@dataclass(frozen=True)
class StartOptions:
    """``murmur worker start``'s options, as given (env vars already applied by Typer)."""

    app: str | None
    agents: list[str]
    broker: str | None
    concurrency: int
    grace: float
    redeliver_after: float
    namespace: str | None
    name: str | None
    heartbeat: float
    log_format: str
    max_deliveries: int = 5
    #: ``--rate-limit`` SPECs (``MURMUR_RATE_LIMITS``), as given.
    rate_limits: Sequence[str] = ()


def run_worker(options: StartOptions) -> int:
    """Serve until stopped; returns the process's exit code."""
    reporter = _reporter(options.log_format)
    # The murmur loggers report through the reporter while the command runs, and are put
    # back as they were after (the command may run inside a process that goes on).
    with reporter.capturing_logs():
        try:
            worker = _build_worker(options, reporter)
            loop_options = _loop_options()
        except (InvalidValueError, MissingDependencyError) as exc:
            return _error(str(exc), USAGE)
        try:
            return anyio.run(_serve, worker, reporter, backend_options=loop_options)
        except KeyboardInterrupt:  # Ctrl-C after the signal handlers were restored
            return 128 + signal.SIGINT


def _loop_options() -> dict[str, Any]:
    """The worker's event loop (``MURMUR_WORKER_LOOP``): ``auto`` (the default) uvloop
    where it is installed (the broker extras install it where it builds), else asyncio's
    own; ``asyncio`` insists on the latter, ``uvloop`` on the former. A worker's own CPU
    per task is most of what it spends on a cheap task.

    Raises:
        InvalidValueError: another value, or ``uvloop`` where it is not installed.
    """
    wanted = os.environ.get("MURMUR_WORKER_LOOP", "auto").strip().lower() or "auto"
    if wanted not in ("auto", "asyncio", "uvloop"):
        raise InvalidValueError(
            f"MURMUR_WORKER_LOOP must be auto, asyncio or uvloop, got {wanted!r}"
        )
    if wanted == "asyncio":
        return {}
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if wanted == "uvloop":
            raise InvalidValueError(
                "MURMUR_WORKER_LOOP=uvloop, but uvloop is not installed "
                "(pip install uvloop, or a broker extra such as murmur-agents[redis])"
            ) from None
        return {}
    return {"use_uvloop": True}


def _build_worker(options: StartOptions, reporter: _Reporter) -> Worker:
    """The worker ``options`` describe, its app imported.

    Raises:
        InvalidValueError: no app or broker, an app that does not import or defines no
            agent, an agent it does not define, a bad broker URL, ``--rate-limit`` or option.
        MissingDependencyError: the broker's extra is not installed.
    """
    if not options.app:
        raise InvalidValueError(
            "no app module: pass --app MODULE or set MURMUR_APP (the module that defines "
            "the agents, e.g. --app myproject.agents)"
        )
    if not options.broker:
        raise InvalidValueError(
            "no broker: pass --broker URL or set MURMUR_BROKER (e.g. redis://localhost:6379)"
        )
    wanted = _agent_names(options.agents)
    # Checked before the broker and the app: a typo in a limit is the cheapest to report.
    limits = parse_rate_limits(options.rate_limits)
    # The URL and its extra first: cheap, and worth knowing before the app import.
    load_adapter(parse_broker_url(options.broker))
    _current_directory_on_path()
    registry = AgentRegistry.from_module(options.app)
    if wanted:
        registry = registry.select(wanted)
    elif not len(registry):
        raise InvalidValueError(
            f"the app module {options.app!r} defines no agents (module-level murmur.Agent "
            "or pydantic-ai agents, its own async def functions, or murmur.register)"
        )
    return Worker(
        options.broker,
        registry,
        concurrency=options.concurrency,
        name=options.name,
        namespace=options.namespace,
        event_emitter=reporter,
        heartbeat_seconds=options.heartbeat,
        grace_seconds=options.grace,
        max_deliveries=options.max_deliveries,
        redeliver_after=options.redeliver_after,
        # The limits apply to the calls the worker runs, as it runs them (executor side).
        middleware=[RateLimitMiddleware(limits)] if limits else (),
    )


def _agent_names(values: list[str]) -> list[str]:
    """``--agents a,b --agents c`` as ``[a, b, c]``, blanks and repeats dropped."""
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    if values and not names:
        raise InvalidValueError("--agents names no agent; leave it out to serve them all")
    return names


def _current_directory_on_path() -> None:
    """Import the app as ``python -m`` would: from the current directory first."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _error(message: str, code: int) -> int:
    _write(sys.stderr, f"error: {_one_line(message)}")
    return code


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _write(stream: TextIO, line: str) -> None:
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):  # stderr closed or gone: nothing to report to
        pass


# -- serving ---------------------------------------------------------------------------


async def _serve(worker: Worker, reporter: _Reporter) -> int:
    """Serve with ``worker``, stopping it on signals; the exit code."""
    exit_code = 0
    stop_requested = False
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as task_group:

            async def on_signals() -> None:
                nonlocal exit_code, stop_requested
                async for signum in signals:
                    if not stop_requested:
                        stop_requested = True
                        reporter.stop_requested(worker, signum, now=False)
                        worker.request_stop()  # before it consumes: it stops once it does
                        continue
                    reporter.stop_requested(worker, signum, now=True)
                    exit_code = 128 + signum
                    worker.stop_now()
                    task_group.cancel_scope.cancel()  # also while still connecting
                    return

            task_group.start_soon(on_signals)
            try:
                await worker.serve(
                    task_status=_OnStarted(lambda: reporter.running(worker, task_group))
                )
            except BrokerUnavailableError as exc:
                reporter.close()
                return _error(str(exc), FAILED)
            except Exception as exc:
                reporter.close()
                return _error(f"worker {worker.name} failed: {_describe(exc)}", FAILED)
            finally:
                task_group.cancel_scope.cancel()
            reporter.close()
    return exit_code


class _OnStarted(anyio.abc.TaskStatus[None]):
    """``Worker.serve``'s start notification, as a callback: the worker runs in this task."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback

    def started(self, value: None = None) -> None:
        self._callback()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _describe(exc.exceptions[0])
    return f"{type(exc).__name__}: {exc}"


# -- reporting -------------------------------------------------------------------------


def _reporter(log_format: str) -> _Reporter:
    if log_format == "json":
        reporter: _Reporter = _JsonReporter(sys.stderr)
    elif log_format == "console" or not sys.stderr.isatty():
        reporter = _Reporter(sys.stderr)
    else:
        reporter = _LiveReporter()
    return reporter


class _Reporter:
    """The worker's event emitter, and the lines the command writes itself: plain lines
    (``time  event  worker  key=value ...``) on ``stream``, what ``--log-format console``
    writes; the other formats override ``line``.

    Also receives the ``murmur`` loggers' warnings (a rejected message, a reply that could
    not be sent), so nothing the worker reports is lost.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    async def emit(self, event: RuntimeEvent) -> None:
        self.line(event.type.value, event.timestamp, dict(event.data))

    def line(self, event: str, timestamp: float, data: dict[str, Any]) -> None:
        """Report ``event``."""
        _write(self._stream, _console_line(event, timestamp, data))

    def stop_requested(self, worker: Worker, signum: int, *, now: bool) -> None:
        self.line(
            STOP_REQUESTED,
            time.time(),
            {
                "worker": worker.name,
                "signal": signal.Signals(signum).name,
                "mode": "now" if now else "drain",
                "grace": worker.grace_seconds,
                "in_flight": worker.stats.in_flight,
            },
        )

    def running(self, worker: Worker, task_group: anyio.abc.TaskGroup) -> None:
        """The worker is taking tasks."""

    def close(self) -> None:
        """The worker has stopped."""

    @contextmanager
    def capturing_logs(self) -> Iterator[None]:
        handler = _LogHandler(self)
        logger = logging.getLogger("murmur")
        level, propagate = logger.level, logger.propagate
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.propagate = False
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


class _LogHandler(logging.Handler):
    def __init__(self, reporter: _Reporter) -> None:
        super().__init__(logging.INFO)
        self._reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        data: dict[str, Any] = {
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info is not None and record.exc_info[1] is not None:
            data["exception"] = _describe(record.exc_info[1])
        try:
            self._reporter.line("log", record.created, data)
        except Exception:
            self.handleError(record)


def _iso(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _JsonReporter(_Reporter):
    """One JSON object per line: ``event``, ``worker``, ``timestamp`` and the event's data."""

    def line(self, event: str, timestamp: float, data: dict[str, Any]) -> None:
        record = {"event": event, "timestamp": _iso(timestamp), **data}
        _write(self._stream, json.dumps(record, default=str))


def _console_line(event: str, timestamp: float, data: dict[str, Any]) -> str:
    when = datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")
    fields = dict(data)
    head = [when, f"{event:<22}"]
    if "worker" in fields:
        head.append(str(fields.pop("worker")))
    if event == "log":
        head[1] = f"{fields.pop('level', 'info'):<22}"
        return " ".join([*head, str(fields.pop("message", "")), *_pairs(fields)])
    return " ".join([*head, *_pairs(fields)])


def _pairs(fields: dict[str, Any]) -> list[str]:
    return [
        f"{key}={_limits_text(value) if key == 'rate_limits' else _plain(value)}"
        for key, value in fields.items()
    ]


def _limits_text(states: list[dict[str, Any]]) -> str:
    """A worker's rate limits (``Worker.rate_limit_state()``), one ``; `` apart: each one's
    name, the lowest fraction of its rates in force and for which model (a 429 slows only
    its model), how many calls wait for it, how long a model is paused."""
    now = time.time()
    texts = []
    for state in states:
        text = f"{state['limit']} x{state['factor']:.2f}"
        slowed = state.get("slowed") or {}
        if slowed:
            text += f" for {next(iter(slowed))}"
            if len(slowed) > 1:
                text += f" +{len(slowed) - 1}"
        if state["waiting"]:
            text += f" {state['waiting']} waiting"
        until = state["paused_until"]
        if until is not None and until > now:
            text += f" paused {until - now:.1f}s"
        texts.append(text)
    return "; ".join(texts)


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    if isinstance(value, dict):
        return ",".join(f"{key}:{count}" for key, count in value.items()) or "-"
    return str(value)


_LIVE_STYLES = {
    "worker.started": "bold green",
    "worker.stopped": "bold",
    STOP_REQUESTED: "yellow",
    "log": "yellow",
}


class _LiveReporter(_Reporter):
    """On a terminal: the start and stop lines, and a live status line in between."""

    def __init__(self) -> None:
        from rich.console import Console

        super().__init__(sys.stderr)
        self._console: Console = Console(stderr=True, highlight=False)
        self._live: Live | None = None
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._draining = False

    def line(self, event: str, timestamp: float, data: dict[str, Any]) -> None:
        from rich.text import Text

        if event == "worker.heartbeat":
            return  # the status line shows it, live
        if event == STOP_REQUESTED:
            self._draining = True
        style = _LIVE_STYLES.get(event, "")
        self._console.print(
            Text(_console_line(event, timestamp, data), style=style), soft_wrap=True
        )

    def running(self, worker: Worker, task_group: anyio.abc.TaskGroup) -> None:
        from rich.live import Live

        live = self._live = Live(
            self._status(worker), console=self._console, auto_refresh=False, transient=True
        )
        live.start()
        task_group.start_soon(self._refresh, worker, live)

    async def _refresh(self, worker: Worker, live: Live) -> None:
        while True:
            live.update(self._status(worker), refresh=True)
            await anyio.sleep(_REFRESH_SECONDS)

    def _status(self, worker: Worker) -> Text:
        from rich.text import Text

        stats = worker.stats
        now, done = time.monotonic(), stats.processed + stats.failed
        samples = self._samples
        samples.append((now, done))
        while len(samples) > 2 and now - samples[0][0] > _RATE_WINDOW:
            samples.popleft()
        first_time, first_done = samples[0]
        rate = (done - first_done) / (now - first_time) if now > first_time else 0.0
        status = Text.assemble(
            ("◐ draining " if self._draining else "● ", "yellow" if self._draining else "green"),
            (worker.name, "bold"),
            f"  processed {stats.processed}",
            ("  failed ", ""),
            (str(stats.failed), "red" if stats.failed else ""),
            f"  in flight {stats.in_flight}/{worker.concurrency}",
            f"  {rate:.1f} tasks/s",
        )
        if stats.per_agent:
            per_agent = ", ".join(
                f"{name} {count}" for name, count in sorted(stats.per_agent.items())
            )
            status.append(f"  ({per_agent})", style="dim")
        limits = worker.rate_limit_state()
        if limits:
            slowed = any(state["factor"] < 1 or state["paused_until"] for state in limits)
            status.append(f"  limits: {_limits_text(limits)}", style="yellow" if slowed else "dim")
        return status

    def close(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()
