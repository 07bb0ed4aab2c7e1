"""``murmur demo``: a fan-out of agent calls over an offline, simulated model.

A ``murmur.Agent`` triages synthetic support tickets. Its model is a pydantic-ai
``FunctionModel`` standing in for a real LLM: seeded latencies, plausible token usage,
deterministic answers, and every ``fail_every``-th call failing on purpose (rate limit,
overload, or malformed output) so the summary can show failures coming back as data.
The calls run through ``AgentRuntime.gather``; a custom pipeline stage (``LiveMonitor``)
watches them go by and drives the live progress display. With a broker URL they run on
local worker processes instead (``_demo_broker`` starts and stops them), serving the same
agent from ``_demo_agents``.

Everything a call does depends only on ``(seed, ticket id)``, never on scheduling, so a
given seed gives the same answers, failures and token counts on asyncio and on Trio.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, NoReturn

import anyio
import pydantic_ai
import typer
from pydantic import BaseModel, Field
from pydantic_ai import ModelHTTPError, ModelOverloadedError, ModelRateLimitError
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    ToolCallPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from .. import Agent, AgentContext, AgentResult, AgentRuntime, CallNext, TaskSpec
from ..distributed import BrokerTransport, BrokerURL, parse_broker_url
from ..errors import BrokerUnavailableError, InvalidValueError, RemoteAgentError
from ..events import EventType, RuntimeEvent
from ._demo_broker import DemoWorkerError, DemoWorkers, delete_namespace
from ._demo_command import Backend

__all__ = [
    "DemoConfig",
    "DemoReport",
    "LiveMonitor",
    "Ticket",
    "Triage",
    "build_agent",
    "failure_kind",
    "make_tickets",
    "run_demo",
    "run_in_terminal",
    "simulated_model",
]

MODEL_NAME = "murmur-sim"
AGENT_NAME = "triage"
INSTRUCTIONS = (
    "You triage customer support tickets. Classify the ticket, give it a priority from "
    "1 (drop everything) to 5 (whenever), and summarise it in one line."
)

Category = Literal["billing", "bug", "account", "feature-request", "outage"]
FailureKind = Literal["rate-limit", "overloaded", "malformed-output"]


# -- the workload ------------------------------------------------------------------------


class Ticket(BaseModel):
    """One synthetic support ticket: the agent's input (rendered to the model as JSON)."""

    id: int
    customer: str
    subject: str
    body: str


class Triage(BaseModel):
    """The agent's structured output."""

    category: Category
    priority: int = Field(ge=1, le=5)
    summary: str


_CUSTOMERS = (
    "Acme Corp",
    "Globex",
    "Initech",
    "Umbrella Health",
    "Stark Logistics",
    "Wayne Foods",
    "Hooli",
    "Vandelay Imports",
)
_REPORTS = ("revenue", "churn", "usage", "latency", "pipeline")
_PLANS = ("Team", "Business", "Enterprise")
_MONTHS = ("January", "February", "March", "April", "May", "June")
_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("Charged twice for {plan}", "We were billed twice for the {plan} plan; please refund one."),
    ("Invoice has the wrong VAT number", "The {month} invoice shows a wrong VAT number."),
    ("CSV export fails", "Exporting the {report} report to CSV gives an empty file since Monday."),
    ("Dashboard chart is blank", "The {report} chart stays blank in Firefox; Chrome works."),
    ("Password reset email missing", "The password reset email never arrives; spam checked."),
    ("Add a seat for a new hire", "Please add a seat and give our new hire admin rights."),
    ("Dark mode, please", "The team works late; a dark mode for the editor would help."),
    ("SSO with Okta", "We need SAML single sign-on before rolling out to {n} people."),
    ("API returns 502", "Since {hour}:00 UTC every API call returns 502; production is down."),
    ("Webhooks not delivered", "No webhooks delivered for {n} minutes; our orders are stuck."),
)
# The simulated model's "understanding": the first keyword found decides the category.
_KEYWORDS: tuple[tuple[str, Category, int], ...] = (
    ("production is down", "outage", 1),
    ("webhooks", "outage", 1),
    ("billed", "billing", 2),
    ("invoice", "billing", 3),
    ("empty file", "bug", 2),
    ("blank", "bug", 3),
    ("password", "account", 2),
    ("seat", "account", 4),
)


def make_tickets(count: int, seed: int) -> list[Ticket]:
    """``count`` synthetic tickets, ids 1..count; ticket ``i`` depends only on (seed, i)."""
    tickets = []
    for ticket_id in range(1, count + 1):
        rng = random.Random(f"{seed}:ticket:{ticket_id}")
        subject, body = rng.choice(_TEMPLATES)
        fields = {
            "plan": rng.choice(_PLANS),
            "month": rng.choice(_MONTHS),
            "report": rng.choice(_REPORTS),
            "n": rng.randint(5, 500),
            "hour": rng.randint(0, 23),
        }
        tickets.append(
            Ticket(
                id=ticket_id,
                customer=rng.choice(_CUSTOMERS),
                subject=subject.format(**fields),
                body=body.format(**fields),
            )
        )
    return tickets


def failure_kind(ticket_id: int, fail_every: int) -> FailureKind | None:
    """How the simulated model fails ticket ``ticket_id``, or ``None`` when it doesn't.

    Every ``fail_every``-th ticket fails (0 disables failures), cycling through a rate
    limit (HTTP 429), an overload (HTTP 529) and malformed structured output.
    """
    if fail_every <= 0 or ticket_id % fail_every:
        return None
    kinds: tuple[FailureKind, ...] = ("malformed-output", "rate-limit", "overloaded")
    return kinds[(ticket_id // fail_every) % len(kinds)]


# -- the offline model -------------------------------------------------------------------


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _ticket_in(messages: list[ModelMessage]) -> Ticket:
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    # A non-str task input reaches the model as JSON: parse it back.
                    return Ticket.model_validate_json(part.content)
    raise ValueError("the simulated model expects a Ticket as the user prompt")


def _answer(ticket: Ticket) -> Triage:
    text = f"{ticket.subject} {ticket.body}".lower()
    category: Category = "feature-request"
    priority = 5
    for keyword, found, level in _KEYWORDS:
        if keyword in text:
            category, priority = found, level
            break
    return Triage(
        category=category, priority=priority, summary=f"{ticket.customer}: {ticket.subject}"
    )


def simulated_model(*, seed: int, fail_every: int, latency: float = 0.1) -> FunctionModel:
    """A pydantic-ai ``FunctionModel`` that triages ``Ticket`` prompts, offline.

    Args:
        seed: Seeds the per-ticket latency and token counts.
        fail_every: Every Nth ticket fails (see ``failure_kind``); 0 disables failures.
        latency: Mean of the simulated latency's random part, in seconds.
    """

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        ticket = _ticket_in(messages)
        rng = random.Random(f"{seed}:model:{ticket.id}")
        delay = 0.02 + min(rng.expovariate(1 / latency), 6 * latency) if latency > 0 else 0.0
        kind = failure_kind(ticket.id, fail_every)
        if kind in ("rate-limit", "overloaded"):
            await anyio.sleep(delay / 4)  # providers refuse fast
            category = ModelRateLimitError if kind == "rate-limit" else ModelOverloadedError
            raise ModelHTTPError.for_category(
                category,
                status_code=429 if kind == "rate-limit" else 529,
                model_name=MODEL_NAME,
                body=f"{kind} (simulated)",
            )
        await anyio.sleep(delay)
        answer = _answer(ticket)
        args: dict[str, Any] = answer.model_dump()
        if kind == "malformed-output":
            # Invalid every time, so pydantic-ai's output retry gives up too.
            args = {"category": "URGENT!!!", "priority": 0}
        if not info.output_tools:
            raise RuntimeError("the simulated model expects a structured output type")
        input_tokens = (
            160
            + _estimate_tokens(INSTRUCTIONS)
            + sum(
                _estimate_tokens(str(getattr(part, "content", "")))
                for message in messages
                for part in message.parts
            )
        )
        output_tokens = 12 + _estimate_tokens(answer.summary) + rng.randint(0, 24)
        return ModelResponse(
            parts=[ToolCallPart(tool_name=info.output_tools[0].name, args=args)],
            usage=RequestUsage(input_tokens=input_tokens, output_tokens=output_tokens),
        )

    return FunctionModel(respond, model_name=MODEL_NAME)


def build_agent(*, seed: int, fail_every: int, latency: float = 0.1) -> Agent:
    """The demo's ``murmur.Agent``: ``Ticket`` in, ``Triage`` out, on the offline model."""
    return Agent(
        name=AGENT_NAME,
        model=simulated_model(seed=seed, fail_every=fail_every, latency=latency),
        instructions=INSTRUCTIONS,
        input_type=Ticket,
        output_type=Triage,
    )


# -- the pipeline stage ------------------------------------------------------------------


class LiveMonitor:
    """A pipeline stage that counts tasks as they go by: in flight, succeeded, failed, tokens.

    Pass it as ``AgentRuntime(middleware=[monitor])``; ``on_change(monitor)`` is called
    each time a task starts or finishes. A cancelled task counts as neither success nor
    failure. User stages run inside the retry policy, so with ``retry_max_attempts > 1``
    a stage like this one sees every attempt (the demo runs without retries).
    """

    #: On the caller's side: it watches the calls where they are made, whether they run in
    #: this process or on workers through a broker.
    side = "caller"

    def __init__(self, on_change: Callable[[LiveMonitor], None] | None = None) -> None:
        self.in_flight = 0
        self.peak_in_flight = 0
        self.succeeded = 0
        self.failed = 0
        self._on_change = on_change

    @property
    def done(self) -> int:
        """Tasks finished so far, successfully or not."""
        return self.succeeded + self.failed

    async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self._changed()
        try:
            output = await call_next(ctx)
        except Exception:
            self.failed += 1
            raise
        else:
            self.succeeded += 1
            return output
        finally:
            self.in_flight -= 1
            self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)


# -- running it --------------------------------------------------------------------------


class _NoEvents:
    """An event emitter that wants nothing: the progress display and summary replace the
    default event log, which would otherwise print under the live display."""

    def event_types(self) -> frozenset[EventType]:
        return frozenset()

    async def emit(self, event: RuntimeEvent) -> None:
        return None


@dataclass(frozen=True)
class DemoConfig:
    """The demo's knobs, as given on the command line."""

    tasks: int = 200
    concurrency: int = 20
    backend: Backend = Backend.asyncio
    seed: int = 0
    fail_every: int = 20
    latency: float = 0.1
    #: A broker URL: the calls run on ``workers`` local worker processes through it.
    broker: str | None = None
    workers: int = 1


@dataclass(frozen=True)
class DemoReport:
    """What a demo run produced: every result, in input order, plus what was observed."""

    config: DemoConfig
    results: list[AgentResult[Any]]
    wall_time: float
    peak_concurrency: int
    #: The names of the workers the calls went to (through a broker), in start order.
    workers: tuple[str, ...] = ()

    @property
    def succeeded(self) -> int:
        return sum(1 for r in self.results if r.is_ok())

    @property
    def failures(self) -> list[AgentResult[Any]]:
        return [r for r in self.results if not r.is_ok()]

    @property
    def error_types(self) -> Counter[str]:
        return Counter(_error_name(r.error) for r in self.failures)

    @property
    def per_worker(self) -> Counter[str]:
        """Tasks by the worker that ran them (through a broker; empty in-process)."""
        return Counter(r.worker for r in self.results if r.worker is not None)

    @property
    def input_tokens(self) -> int:
        return sum(r.usage.input_tokens for r in self.results)

    @property
    def output_tokens(self) -> int:
        return sum(r.usage.output_tokens for r in self.results)

    @property
    def requests(self) -> int:
        return sum(r.usage.requests for r in self.results)

    @property
    def throughput(self) -> float:
        return len(self.results) / self.wall_time if self.wall_time > 0 else 0.0


async def run_demo(
    config: DemoConfig, monitor: LiveMonitor | None = None, workers: DemoWorkers | None = None
) -> DemoReport:
    """Fan the tickets out through ``AgentRuntime.gather`` and collect the report: in this
    process, or through ``config.broker`` to ``workers``.

    Raises:
        DemoWorkerError: one of ``workers`` stopped before the fan-out was done (its tasks
            would wait for it for good: the demo sets no timeout).
    """
    if monitor is None:
        monitor = LiveMonitor()
    agent = build_agent(seed=config.seed, fail_every=config.fail_every, latency=config.latency)
    tasks = [
        TaskSpec(input=ticket, task_id=f"ticket-{ticket.id:05d}")
        for ticket in make_tickets(config.tasks, config.seed)
    ]
    transport = None
    if config.broker is not None:
        assert workers is not None, "a broker needs the workers serving it"
        transport = BrokerTransport(config.broker, namespace=workers.namespace)
    async with AgentRuntime(
        middleware=[monitor], event_emitter=_NoEvents(), transport=transport
    ) as runtime:
        start = time.perf_counter()
        if workers is None:
            results = await runtime.gather(agent, tasks, max_concurrency=config.concurrency)
        else:
            results = await _gather_watching(runtime, agent, tasks, config, workers)
        wall_time = time.perf_counter() - start
    return DemoReport(
        config=config,
        results=results,
        wall_time=wall_time,
        peak_concurrency=monitor.peak_in_flight,
    )


async def _gather_watching(
    runtime: AgentRuntime,
    agent: Agent,
    tasks: list[TaskSpec],
    config: DemoConfig,
    workers: DemoWorkers,
) -> list[AgentResult[Any]]:
    """``gather``, cut short by a worker that stops meanwhile (killed, out of memory)."""
    results: list[AgentResult[Any]] | None = None
    gone: str | None = None
    async with anyio.create_task_group() as task_group:

        async def watch() -> None:
            nonlocal gone
            # Left blocked when the fan-out is done: it returns once the workers are stopped.
            gone = await anyio.to_thread.run_sync(workers.wait_stopped, abandon_on_cancel=True)
            task_group.cancel_scope.cancel()

        task_group.start_soon(watch)
        results = await runtime.gather(agent, tasks, max_concurrency=config.concurrency)
        task_group.cancel_scope.cancel()
    if results is None:
        raise DemoWorkerError(gone or "the demo's workers stopped")
    return results


# -- display -----------------------------------------------------------------------------


class _ThroughputColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = task.elapsed
        if not elapsed or not task.completed:
            return Text("- tasks/s", style="progress.data.speed")
        return Text(f"{task.completed / elapsed:,.0f} tasks/s", style="progress.data.speed")


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(finished_text="[green]✓[/]"),
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn(
            "[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/] "
            "[dim]{task.fields[in_flight]} in flight[/]"
        ),
        _ThroughputColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _describe_backend(config: DemoConfig) -> str:
    if config.broker is not None:
        from ._serve import _loop_options

        try:
            loop = "uvloop" if _loop_options() else "asyncio"
        except InvalidValueError:
            loop = "asyncio"
        return f"{config.backend.value} (the caller; workers on {loop})"
    if config.backend is Backend.trio:
        return "trio (pydantic-ai calls via the asyncio bridge)"
    return "asyncio"


def _error_name(error: BaseException | None) -> str:
    """The failure's type name; for one rebuilt from a worker, the original's."""
    if isinstance(error, RemoteAgentError):
        return error.type_name.rpartition(".")[2]
    return type(error).__name__


def _error_message(error: BaseException | None) -> str:
    return error.message if isinstance(error, RemoteAgentError) else str(error)


def _plural(count: int, noun: str, nouns: str | None = None) -> str:
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def _summary_table(report: DemoReport) -> Table:
    config = report.config
    table = Table(
        title="murmur demo: summary",
        title_justify="left",
        show_header=False,
        box=box.ROUNDED,
    )
    table.add_column("metric", style="bold")
    table.add_column("value")
    failures = report.failures
    table.add_row("Tasks", f"{len(report.results)}")
    table.add_row("Succeeded", f"[green]{report.succeeded}[/]")
    table.add_row("Failed", f"[red]{len(failures)}[/]" if failures else "0")
    for name, count in sorted(report.error_types.items(), key=lambda item: (-item[1], item[0])):
        table.add_row(f"  {name}", f"{count}", style="dim")
    total = report.input_tokens + report.output_tokens
    table.add_row(
        "Tokens",
        f"{total:,} ({report.input_tokens:,} in / {report.output_tokens:,} out, "
        f"{report.requests:,} requests)",
    )
    table.add_row("Wall time", f"{report.wall_time:.2f} s")
    table.add_row("Throughput", f"{report.throughput:,.1f} tasks/s")
    table.add_row("Peak concurrency", f"{report.peak_concurrency} (cap {config.concurrency})")
    table.add_row("Backend", _describe_backend(config))
    if config.broker is not None:
        table.add_row("Broker", parse_broker_url(config.broker).redacted)
        table.add_row("Workers", _plural(len(report.workers), "local process", "local processes"))
        per_worker = report.per_worker
        for name in report.workers:
            table.add_row(f"  {name}", f"{per_worker[name]} tasks", style="dim")
        unknown = len(report.results) - sum(per_worker.values())
        if unknown:
            table.add_row("  (no worker)", f"{unknown} tasks", style="dim")
    return table


def _failures_table(report: DemoReport, limit: int = 3) -> Table:
    failures = report.failures
    table = Table(
        title=f"First {min(limit, len(failures))} of {len(failures)} failures",
        title_justify="left",
        box=box.SIMPLE,
        expand=True,
    )
    table.add_column("task_id", no_wrap=True, min_width=12)
    table.add_column("error", no_wrap=True, style="red", min_width=23)
    table.add_column("message", no_wrap=True, overflow="ellipsis", ratio=1)
    for result in failures[:limit]:
        table.add_row(result.task_id, _error_name(result.error), _error_message(result.error))
    return table


def _is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, possibly wrapped in an exception group by the task group it went through."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(KeyboardInterrupt)[1] is None
    return isinstance(exc, KeyboardInterrupt)


def _show(console: Console, report: DemoReport) -> None:
    console.print()
    console.print(_summary_table(report))
    if report.failures:
        console.print(_failures_table(report))
        console.print(
            "Failures are data: each failed call is an AgentResult in its slot, with "
            "[bold].error[/] set; the rest of the batch ran to completion."
        )


# -- the command ---------------------------------------------------------------------------


def run_in_terminal(config: DemoConfig) -> None:
    """Run the demo in the terminal: a live progress bar, then the summary tables."""
    # The CLI owns the terminal: no pydantic-ai first-run banner under the progress bar.
    pydantic_ai.BANNER_ENABLED = False
    console = Console()
    if config.broker is None:
        _show(console, _run_live(console, config))
    else:
        _run_on_broker(console, config, config.broker)


def _run_live(
    console: Console, config: DemoConfig, workers: DemoWorkers | None = None
) -> DemoReport:
    """The fan-out under a live progress bar; Ctrl-C exits 130."""
    failures = (
        f"1 call in {config.fail_every} fails on purpose"
        if config.fail_every
        else "no simulated failures"
    )
    where = ""
    if config.broker is not None:
        where = f", through {parse_broker_url(config.broker).redacted} to the workers"
    console.print(
        f"Fanning out [bold]{config.tasks}[/] calls of agent [bold]{AGENT_NAME!r}[/] "
        f"(offline model {MODEL_NAME!r}, seed {config.seed}, {failures}) "
        f"with max_concurrency={config.concurrency} on {config.backend.value}{where}.",
        highlight=False,
    )
    progress = _progress(console)
    bar: TaskID | None = None

    def on_change(monitor: LiveMonitor) -> None:
        if bar is not None:
            progress.update(
                bar,
                completed=monitor.done,
                ok=monitor.succeeded,
                failed=monitor.failed,
                in_flight=monitor.in_flight,
            )

    monitor = LiveMonitor(on_change)
    try:
        with progress:
            bar = progress.add_task(AGENT_NAME, total=config.tasks, ok=0, failed=0, in_flight=0)
            return anyio.run(run_demo, config, monitor, workers, backend=config.backend.value)
    except BaseException as exc:
        if not _is_interrupt(exc):
            raise
        console.print("[yellow]Interrupted.[/]")
        raise typer.Exit(130) from None


def _run_on_broker(console: Console, config: DemoConfig, broker: str) -> None:
    """The demo through ``broker``, on local workers started here and stopped on every way
    out (an error, Ctrl-C), their namespace deleted from the broker after them."""
    url = parse_broker_url(broker)
    namespace = f"murmur-demo-{uuid.uuid4().hex[:8]}"
    workers = DemoWorkers(
        url,
        namespace,
        count=config.workers,
        concurrency=config.concurrency,
        seed=config.seed,
        fail_every=config.fail_every,
        latency=config.latency,
    )
    count = _plural(config.workers, "local worker")
    try:
        with console.status(f"Starting {count} on {url.redacted} ..."):
            workers.start()
        started = ", ".join(
            f"{name} (pid {pid})" for name, pid in zip(workers.names, workers.pids, strict=True)
        )
        console.print(
            f"Started {count} on {url.redacted}, namespace {namespace}: {started}.",
            highlight=False,
        )
        report = _run_live(console, config, workers)
        _show(console, replace(report, workers=tuple(workers.names)))
    except (BrokerUnavailableError, DemoWorkerError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:  # while the workers start (the fan-out exits 130 itself)
        console.print("[yellow]Interrupted.[/]")
        raise typer.Exit(130) from None
    finally:
        workers.stop()
        if workers.started:
            _delete(console, url, namespace)


def _delete(console: Console, url: BrokerURL, namespace: str) -> None:
    """Delete the demo's namespace from the broker; a failure is a warning, not an error."""
    try:
        delete_namespace(url, namespace, [AGENT_NAME])
    except Exception as exc:
        typer.echo(
            f"warning: could not delete the demo's namespace {namespace} from {url.redacted}: "
            f"{type(exc).__name__}: {exc}",
            err=True,
        )
    else:
        console.print(
            f"Stopped the workers; deleted namespace {namespace} from the broker.",
            highlight=False,
        )


def _fail(message: str) -> NoReturn:
    """One line on stderr, exit 1: what ``murmur worker start`` does for the same errors."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(1)
