"""Scenario "policies": what retry, timeout, budget, depth limit and event emitters cost.

The same ``gather`` as the overhead scenario (no-op function agents, and pydantic-ai
``FunctionModel`` agents), run by runtimes that differ only in their ``RuntimeOptions`` or
their event emitter. The baseline is the bare pipeline with no events at all
(``RuntimeOptions()``, ``event_emitter=MultiEventEmitter([])``); every variant is a paired
ratio against it, interleaved with it in this process.

No policy fires here (nothing fails, nothing times out, the budget is never reached):
what is measured is the price of having them switched on — a retry loop, a cancel scope
per attempt, a token reservation per task, a depth check.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import sniffio

from murmur import AgentRuntime, LogEventEmitter, RuntimeOptions, TaskSpec, TokenBudget
from murmur.events import MultiEventEmitter

from ..harness import (
    Contender,
    Samples,
    Stats,
    Timing,
    available_backends,
    fmt_ratio,
    fmt_spread,
    interleave,
    paired_ratio,
    run_on,
    save_figure,
    timed,
)
from ..registry import Headline, RunConfig, Scenario, ScenarioResult, Table, register
from ..workloads import (
    Workload,
    _check,
    _murmur_outputs,
    get_workload,
    make_inputs,
    make_specs,
)

__all__ = [
    "ALL_POLICIES_TARGET",
    "LOG_TARGET",
    "NOOP_EMITTER_TARGET",
    "VARIANTS",
    "PolicyCell",
    "Variant",
    "measure",
    "run",
]

NAME = "policies"
CAP = 100
#: The issue's targets: ratios to the bare runtime with no events.
ALL_POLICIES_TARGET = 1.25
LOG_TARGET = 1.10
NOOP_EMITTER_TARGET = 1.05
#: A budget no batch here comes near.
HUGE_BUDGET = 10**15

BASELINE = "bare, no events"
ALL_POLICIES = "retry 3 + timeout 60 s + budget"
LOG_FILTERED = "LogEventEmitter, structlog ≥ WARNING"
NOOP_EMITTER = "no-op emitter (every event)"
SEED_STEP_5 = "adoption step 5: Multi([Log, SSE]), no clients"
EMIT_FLOOR = "floor: 2 no-op emits/task, no event"


class NoOpEmitter:
    """Receives every event (declares no ``event_types``) and does nothing with it."""

    def __init__(self) -> None:
        self.count = 0

    async def emit(self, event: Any) -> None:
        self.count += 1


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextlib.contextmanager
def structlog_warnings_only() -> Iterator[None]:
    """structlog filtered below WARNING for the duration; the previous setup restored."""
    import structlog

    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        yield
    finally:
        structlog.reset_defaults()
        structlog.configure(**saved)  # the suite's own sink (harness.quiet_logging)


def _otel_available() -> bool:
    try:
        import opentelemetry.sdk.metrics
        import opentelemetry.sdk.trace  # noqa: F401

        from murmur import OpenTelemetryEmitter  # noqa: F401
    except ImportError:
        return False
    return True


def _otel_emitter() -> Any:
    """An OpenTelemetryEmitter exporting spans to memory and metrics to an in-memory reader."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from murmur import OpenTelemetryEmitter

    # shutdown_on_exit=False: otherwise an atexit hook keeps every provider, and with it
    # every exported span, alive until the process ends (and slows every later collection).
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    return OpenTelemetryEmitter(tracer_provider=tracer_provider, meter_provider=meter_provider)


def _sse_emitter() -> Any:
    from murmur import SSEEventEmitter

    return SSEEventEmitter()


def _seed_step_5() -> Any:
    """The seed's adoption step 5, as written (default log levels, SSE with no client)."""
    from murmur import SSEEventEmitter

    return MultiEventEmitter([LogEventEmitter(), SSEEventEmitter()])


def _two_emits(agent: Any) -> Any:
    """``agent`` (the no-op one) handing one pre-built event to a no-op emitter twice.

    The emitter protocol's own floor on the bare runtime: what handing two events per task
    to ``async def emit`` costs when building them costs nothing at all.
    """
    from murmur import EventType, RuntimeEvent

    emitter = NoOpEmitter()
    emit = emitter.emit
    event = RuntimeEvent(type=EventType.TASK_STARTED)

    async def noop_with_two_emits(value: str) -> str:
        await emit(event)
        await emit(event)
        return value

    return noop_with_two_emits


@dataclass(frozen=True)
class Variant:
    """One runtime configuration under test."""

    name: str
    kind: str  # "baseline" | "policy" | "events"
    options: tuple[tuple[str, Any], ...] = ()
    #: Builds the emitter (None: ``MultiEventEmitter([])``, i.e. no events).
    emitter: Callable[[], Any] | None = None
    #: Wraps each repetition (outside the clock), e.g. structlog configuration.
    setup: Callable[[], contextlib.AbstractContextManager[None]] = _nothing
    target: float | None = None
    #: Replaces the workload's agent (given it); only for the no-op workload.
    agent: Callable[[Any], Any] | None = None

    def runtime(self) -> AgentRuntime:
        kwargs = dict(self.options)
        if "token_budget" in kwargs:
            kwargs["token_budget"] = TokenBudget(limit=HUGE_BUDGET)  # fresh for each runtime
        emitter = MultiEventEmitter([]) if self.emitter is None else self.emitter()
        return AgentRuntime(options=RuntimeOptions(**kwargs), event_emitter=emitter)


_BUDGET = ("token_budget", True)  # replaced by a fresh TokenBudget(limit=HUGE_BUDGET)

VARIANTS: tuple[Variant, ...] = (
    Variant(BASELINE, "baseline"),
    Variant("timeout 60 s", "policy", (("timeout_seconds", 60.0),)),
    Variant("retry 3", "policy", (("retry_max_attempts", 3),)),
    Variant("token budget (huge limit)", "policy", (_BUDGET,)),
    Variant("max_spawn_depth 3", "policy", (("max_spawn_depth", 3),)),
    Variant(
        ALL_POLICIES,
        "policy",
        (("retry_max_attempts", 3), ("timeout_seconds", 60.0), _BUDGET),
        target=ALL_POLICIES_TARGET,
    ),
    Variant(
        LOG_FILTERED,
        "events",
        emitter=LogEventEmitter,
        setup=structlog_warnings_only,
        target=LOG_TARGET,
    ),
    Variant(NOOP_EMITTER, "events", emitter=NoOpEmitter, target=NOOP_EMITTER_TARGET),
    Variant("SSEEventEmitter, no clients", "events", emitter=_sse_emitter),
    Variant(SEED_STEP_5, "events", emitter=_seed_step_5),
    Variant(EMIT_FLOOR, "events", agent=_two_emits),
    Variant("OpenTelemetryEmitter, in-memory exporter", "events", emitter=_otel_emitter),
)


def variants(*, otel: bool | None = None) -> tuple[Variant, ...]:
    """Every variant; the OpenTelemetry one only when its SDK is importable."""
    keep_otel = _otel_available() if otel is None else otel
    return tuple(v for v in VARIANTS if keep_otel or not v.name.startswith("OpenTelemetry"))


async def _gather_once(
    variant: Variant, workload: Workload, inputs: Sequence[str], specs: Sequence[TaskSpec]
) -> Timing:
    agent = workload.agent if variant.agent is None else variant.agent(workload.agent)
    async with variant.runtime() as runtime:
        if workload.asyncio_only and sniffio.current_async_library() != "asyncio":
            await runtime.run(agent, TaskSpec(input="warm-up"))  # start the bridge first
        timing, results = await timed(lambda: runtime.gather(agent, specs, max_concurrency=CAP))
    _check(workload, inputs, _murmur_outputs(results))
    return timing


def _repetition(
    variant: Variant, backend: str, main: Callable[[], Awaitable[Timing]]
) -> Callable[[], Timing]:
    def once() -> Timing:
        with variant.setup():
            return run_on(backend, main)

    return once


def contenders(
    workload_name: str, n: int, backends: Sequence[str], chosen: Sequence[Variant]
) -> list[Contender]:
    """One contender per (variant, backend); the implementation name is the variant's."""
    workload = get_workload(workload_name)
    inputs = make_inputs(n)
    specs = make_specs(inputs)
    out = []
    for backend in backends:
        for variant in chosen:
            main = functools.partial(_gather_once, variant, workload, inputs, specs)
            out.append(Contender(variant.name, backend, _repetition(variant, backend, main)))
    return out


@dataclass
class PolicyCell:
    """Every variant of one workload x N on some backends, and the paired ratios."""

    workload: str
    n: int
    backends: tuple[str, ...]
    reps: int
    variants: tuple[Variant, ...]
    samples: dict[tuple[str, str], Samples]
    seconds: float

    def ratio(self, variant: str, backend: str, *, cpu: bool = False) -> Stats:
        mine, base = self.samples[(variant, backend)], self.samples[(BASELINE, backend)]
        if cpu:
            return paired_ratio(mine.cpu_per_task_us, base.cpu_per_task_us)
        return paired_ratio(mine.per_task_us, base.per_task_us)

    def added_us(self, variant: str, backend: str) -> float:
        """Median of the paired differences, in µs per task."""
        mine, base = self.samples[(variant, backend)], self.samples[(BASELINE, backend)]
        return statistics.median(
            m - b for m, b in zip(mine.per_task_us, base.per_task_us, strict=True)
        )

    def to_json(self) -> dict[str, Any]:
        rows = []
        for (impl, backend), samples in self.samples.items():
            row = samples.to_json()
            variant = next(v for v in self.variants if v.name == impl)
            row["kind"] = variant.kind
            row["target"] = variant.target
            if impl != BASELINE:
                row["ratio_vs_baseline"] = self.ratio(impl, backend).to_json()
                row["cpu_ratio_vs_baseline"] = self.ratio(impl, backend, cpu=True).to_json()
                row["added_us_per_task"] = round(self.added_us(impl, backend), 3)
            rows.append(row)
        return {
            "workload": self.workload,
            "n": self.n,
            "cap": CAP,
            "reps": self.reps,
            "baseline": BASELINE,
            "seconds": round(self.seconds, 2),
            "results": rows,
        }


def measure(
    workload_name: str,
    n: int,
    backends: tuple[str, ...],
    reps: int,
    chosen: Sequence[Variant] | None = None,
    *,
    warm_n: int = 50,
) -> PolicyCell:
    """Warm every (variant, backend) up on ``warm_n`` tasks, then measure, interleaved."""
    picked = tuple(variants() if chosen is None else chosen)
    started = time.perf_counter()
    if warm_n:
        for item in contenders(workload_name, warm_n, backends, picked):
            item.run()
    samples = interleave(contenders(workload_name, n, backends, picked), n, reps)
    return PolicyCell(
        workload_name, n, backends, reps, picked, samples, time.perf_counter() - started
    )


def _verdict(stats: Stats, target: float | None) -> str:
    if target is None:
        return "info"
    return "PASS" if stats.median <= target else "MISS"


def _rows(cell: PolicyCell) -> list[list[str]]:
    rows = []
    for backend in cell.backends:
        for variant in cell.variants:
            samples = cell.samples[(variant.name, backend)]
            if variant.name == BASELINE:
                ratio, cpu, added, verdict = "1 (baseline)", "-", "-", "-"
            else:
                stats = cell.ratio(variant.name, backend)
                ratio = fmt_ratio(stats)
                cpu = f"{cell.ratio(variant.name, backend, cpu=True).median:.2f}x"
                added = f"{cell.added_us(variant.name, backend):+.2f}"
                verdict = _verdict(stats, variant.target)
            rows.append(
                [
                    cell.workload,
                    f"{cell.n:,}",
                    backend,
                    variant.name,
                    fmt_spread(samples.stats()),
                    added,
                    ratio,
                    cpu,
                    "-" if variant.target is None else f"≤ {variant.target:.2f}x",
                    verdict,
                ]
            )
    return rows


COLUMNS = [
    "workload",
    "N",
    "backend",
    "runtime",
    "µs/task",
    "added µs/task",
    "÷ bare (paired)",
    "÷ bare, CPU",
    "target",
    "verdict",
]

_WHAT = {"noop": "no-op", "yield": "yield-once", "fm": "FunctionModel"}

#: Single policies reported in the summary (the rest are in the table).
SUMMARY_INFO = ("timeout 60 s", EMIT_FLOOR, SEED_STEP_5)


def summarise(cells: Sequence[PolicyCell]) -> list[Headline]:
    headlines: list[Headline] = []
    for cell in cells:
        what = _WHAT[cell.workload]
        for backend in cell.backends:
            for variant in cell.variants:
                if variant.target is None and variant.name not in SUMMARY_INFO:
                    continue
                stats = cell.ratio(variant.name, backend)
                headlines.append(
                    Headline(
                        label=f"policies, {cell.n:,} {what} tasks, cap {CAP}, {backend}: "
                        f"{variant.name} ÷ bare runtime without events",
                        value=stats.median,
                        unit="x",
                        spread=f"{stats.min:.2f}-{stats.max:.2f}",
                        target="" if variant.target is None else f"≤ {variant.target:.2f}x",
                        passed=None if variant.target is None else stats.median <= variant.target,
                    )
                )
    return headlines


def plan(config: RunConfig) -> list[tuple[str, int, tuple[str, ...], int]]:
    """(workload, N, backends, repetitions) of each cell of this run."""
    backends = available_backends(config.backends)
    two = tuple(b for b in backends if b in ("asyncio", "trio"))
    asyncio_only = tuple(b for b in backends if b == "asyncio")
    if config.quick:
        return [
            ("noop", 5_000, two, config.pick_reps(3, 3)),
            ("yield", 5_000, two, config.pick_reps(3, 3)),
            ("fm", 80, asyncio_only, config.pick_reps(3, 3)),
        ]
    return [
        ("noop", 100_000, two, config.pick_reps(5, 3)),
        ("yield", 100_000, two, config.pick_reps(5, 3)),
        ("fm", 300, asyncio_only, config.pick_reps(7, 3)),
    ]


def run(config: RunConfig) -> ScenarioResult:
    started = time.perf_counter()
    chosen = variants()
    cells = []
    for workload, n, backends, reps in plan(config):
        picked = chosen
        if workload == "yield":
            # Only what a scope changes: the timeout alone and all policies, no targets (the
            # targets are the issue's, on the foundation's no-op benchmark).
            picked = tuple(
                replace(v, target=None)
                for v in chosen
                if v.name in (BASELINE, "timeout 60 s", ALL_POLICIES)
            )
        else:
            # The emit floor replaces the no-op agent: it belongs with no-op agents only.
            picked = tuple(v for v in chosen if v.agent is None or workload == "noop")
            if config.quick and workload == "fm":
                # Quick mode: the informational emitters on no-op agents only.
                picked = tuple(v for v in picked if v.kind != "events" or v.target is not None)
        warm_n = 50 if workload == "noop" else 20
        cell = measure(workload, n, backends, reps, picked, warm_n=warm_n)
        config.log(
            f"    {workload} N={n:,} cap={CAP}: {len(picked)} runtimes x "
            f"{len(backends)} backends x {reps} reps, {cell.seconds:.1f}s"
        )
        cells.append(cell)
    notes = [
        "Baseline: `AgentRuntime(options=RuntimeOptions(), "
        "event_emitter=MultiEventEmitter([]))` — an empty pipeline and no events. Every other "
        "row changes one thing (or, for the combined row, three) and is divided, repetition "
        "by repetition, by the baseline measured moments apart in this process.",
        "Nothing fires: no task fails, times out or comes near the budget "
        f"(`TokenBudget(limit={HUGE_BUDGET:.0e})`, default reservation per task). The "
        "policies' cost is that of being switched on: a retry loop, an AnyIO cancel scope per "
        "attempt (timeout), a reservation and a charge per task (budget), a depth check.",
        "The no-op agent (`async def f(x): return x`) has no `await`, so it can never reach "
        "a checkpoint and Murmur runs it without the timeout's cancel scope (nothing could "
        "cancel it anyway; see docs/policies.md). The yield-once agent (`await "
        "anyio.lowlevel.checkpoint()`, then return) can suspend, so it runs inside the scope: "
        "its rows show what the scope costs, beside the cost of one trip through the loop.",
        "'added µs/task' is the median of the paired differences. On no-op agents the "
        "baseline is a few µs per task, so a few µs of policy code is a large ratio; the same "
        "code beside a ~2-3 ms pydantic-ai run is what the FunctionModel rows show.",
        "LogEventEmitter row: the runtime's default emitter, with "
        "`structlog.configure(wrapper_class=structlog.make_filtering_bound_logger("
        "logging.WARNING))` for the repetition (restored afterwards); the emitter then asks "
        "for no per-task events. The no-op emitter declares no `event_types()`, so every "
        "event is built and awaited. SSEEventEmitter has no client (events go to its replay "
        "buffer); OpenTelemetryEmitter exports spans to an in-memory exporter through a "
        "SimpleSpanProcessor and metrics to an InMemoryMetricReader. The MultiEventEmitter row "
        "is adoption step 5 of the migration guide as written (default levels: the log child "
        "declares no per-task types, so only the SSE child receives them).",
        "Floor row (no-op agents only): the bare runtime, no events, with an agent that "
        "awaits a no-op `emit(event)` twice on an event built once, before the run. It is "
        "the least that handing two events per task to an `async def emit` can cost, with "
        "no event built at all; the no-op emitter's target (≤ 1.05x) sits at or below it. "
        "Building each event, a frozen pydantic model, adds what the no-op emitter row "
        "shows beyond it.",
    ]
    if not any(v.name.startswith("OpenTelemetry") for v in chosen):
        notes.append("OpenTelemetry SDK not importable: its row is left out.")
    if config.quick:
        notes.append(
            "Quick mode: no-op and yield-once N=5,000 (full run: 100,000), FunctionModel N=80 "
            "(full: 300, 7 repetitions) without the SSE and OpenTelemetry rows, 3 repetitions."
        )
    table = Table(
        "Per-task cost by runtime configuration (median [min-max]); ratios are paired medians "
        "(min-max) against the bare runtime without events",
        COLUMNS,
        [row for cell in cells for row in _rows(cell)],
    )
    return ScenarioResult(
        name=NAME,
        title="Policy and event overhead",
        headlines=summarise(cells),
        tables=[table],
        notes=notes,
        data={"cells": [cell.to_json() for cell in cells]},
        seconds=time.perf_counter() - started,
    )


def _plain(value: float, _position: int) -> str:
    return f"{value:g}"


def plot(result: ScenarioResult, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels: list[tuple[str, list[tuple[str, dict[str, Any], float | None]]]] = []
    for cell in result.data.get("cells", []):
        backends = list(dict.fromkeys(row["backend"] for row in cell["results"]))
        for backend in backends:
            bars = [
                (row["impl"], row["ratio_vs_baseline"], row["target"])
                for row in cell["results"]
                if row["backend"] == backend and row.get("ratio_vs_baseline")
            ]
            what = _WHAT[cell["workload"]]
            panels.append((f"{what}, N={cell['n']:,}, {backend}", bars))
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels) + 2.2, 3.8), sharey=True)
    axes_list = list(axes) if len(panels) > 1 else [axes]
    names = list(dict.fromkeys(bar[0] for _title, bars in panels for bar in bars))
    for index, (ax, (title, bars)) in enumerate(zip(axes_list, panels, strict=True)):
        for name, stats, target in bars:
            y = names.index(name)  # the same row for a variant in every panel
            if target is None:
                color = "tab:gray"
            else:
                color = "tab:green" if stats["median"] <= target else "tab:red"
                ax.plot([target], [y], marker="|", markersize=14, color="black")
            ax.errorbar(
                [stats["median"]],
                [y],
                xerr=[[stats["median"] - stats["min"]], [stats["max"] - stats["median"]]],
                fmt="o",
                color=color,
                capsize=3,
            )
        ax.axvline(1.0, color="black", linewidth=0.6)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_plain))
        ax.xaxis.set_minor_formatter(FuncFormatter(_plain))
        ax.tick_params(axis="x", which="both", labelsize=6)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("÷ bare runtime (paired median, log)", fontsize=8)
        ax.grid(axis="x", alpha=0.3, which="both")
        if index == 0:
            ax.set_yticks(range(len(names)), names, fontsize=7)
    axes_list[0].invert_yaxis()  # shared: the first variant on top in every panel
    fig.suptitle(
        "Policy and event overhead (green: meets its target, marked |; red: misses; "
        "gray: no target); bars: min-max",
        fontsize=9,
    )
    return [save_figure(fig, out_dir / "policies.png")]


register(
    Scenario(
        name=NAME,
        title="Policy and event overhead",
        description=(
            "gather of no-op function agents (N=100k, asyncio and Trio) and pydantic-ai "
            "FunctionModel agents (N=300) at cap 100 with each policy switched on (timeout, "
            "retry, token budget, depth limit), all of them, and with event emitters "
            "(filtered LogEventEmitter, a no-op emitter, SSE, OpenTelemetry), as paired "
            "ratios to the bare runtime without events."
        ),
        run=run,
        plot=plot,
        order=50,
    )
)
