"""Scenario "in-process overhead": what ``gather`` costs per task, against raw baselines.

No-op function agents show the runtime's own cost (nothing else happens); pydantic-ai
``FunctionModel`` agents show it beside a real agent run (~2-3 ms of CPU each). Each
cell runs Murmur and the raw baselines on every backend, interleaved, in this process.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cells import CellPlan, CellResult, run_cell, warm_up
from ..harness import Stats, available_backends, fmt_ratio, fmt_spread, fmt_us, save_figure
from ..registry import Headline, RunConfig, Scenario, ScenarioResult, Table, register
from ..workloads import (
    IMPL_ANYIO,
    IMPL_ASYNCIO_GATHER,
    IMPL_MURMUR,
    IMPL_MURMUR_SPEC,
    IMPL_TASKGROUP,
    IMPL_TRIO,
)

__all__ = ["NOOP_TARGET", "FM_TARGET", "plan", "run", "summarise"]

NAME = "overhead"
NOOP_TARGET = 2.0
FM_TARGET = 1.15
CAPS = (1, 20, 100, 1000)

ALL_IMPLS = (
    IMPL_MURMUR,
    IMPL_MURMUR_SPEC,
    IMPL_ASYNCIO_GATHER,
    IMPL_TASKGROUP,
    IMPL_ANYIO,
    IMPL_TRIO,
)
CORE_IMPLS = (IMPL_MURMUR, IMPL_MURMUR_SPEC, IMPL_ASYNCIO_GATHER, IMPL_TRIO)
SWEEP_IMPLS = (IMPL_MURMUR, IMPL_ASYNCIO_GATHER)
FM_IMPLS = (IMPL_MURMUR, IMPL_ASYNCIO_GATHER)
#: Left out of the 100k cells other than the full run's cap-100 one: the Trio nursery
#: baseline (~5 s a repetition at 100k) and TaskSpec construction under Trio.
SLOW_AT_100K = frozenset({(IMPL_TRIO, "trio"), (IMPL_MURMUR_SPEC, "trio")})

IMPL_ORDER = (
    IMPL_MURMUR,
    IMPL_MURMUR_SPEC,
    IMPL_ASYNCIO_GATHER,
    IMPL_TASKGROUP,
    IMPL_ANYIO,
    IMPL_TRIO,
)
IMPL_COLORS = {
    IMPL_MURMUR: "tab:blue",
    IMPL_MURMUR_SPEC: "tab:cyan",
    IMPL_ASYNCIO_GATHER: "tab:gray",
    IMPL_TASKGROUP: "tab:brown",
    IMPL_ANYIO: "tab:olive",
    IMPL_TRIO: "tab:red",
}

#: FunctionModel batch size (each run costs ~3 ms of CPU).
FM_N = 200

#: The headline cells.
HEADLINE_N = 100_000
HEADLINE_CAP = 100


def _only(backends: Sequence[str], wanted: Sequence[str]) -> tuple[str, ...]:
    return tuple(b for b in backends if b in wanted)


def plan(config: RunConfig) -> list[CellPlan]:
    """The cells of this run; the quick grid is a subset of the full one.

    The spawn-everything baselines (an AnyIO task group or a Trio nursery with a
    CapacityLimiter) cost 35-70 µs per task, several times Murmur's, so at 100k tasks
    they are measured once per backend family only, to keep the full run in budget.
    """
    backends = available_backends(config.backends)
    two = _only(backends, ("asyncio", "trio"))
    cells: list[CellPlan] = []
    if config.quick:
        reps = config.pick_reps(3, 3)
        slow = frozenset({(IMPL_ANYIO, "trio")})
        cells.append(CellPlan("noop", 10_000, HEADLINE_CAP, two, ALL_IMPLS, reps, slow))
        for cap in (1, 20, 1000):
            cells.append(CellPlan("noop", 10_000, cap, two, SWEEP_IMPLS, reps))
        quick_100k = SLOW_AT_100K | {(IMPL_MURMUR_SPEC, "asyncio")}
        cells.append(CellPlan("noop", HEADLINE_N, HEADLINE_CAP, two, CORE_IMPLS, reps, quick_100k))
        cells.append(CellPlan("fm", FM_N, HEADLINE_CAP, two, FM_IMPLS, config.pick_reps(5, 5)))
        return cells
    reps = config.pick_reps(5, 3)
    for n, n_reps in ((1_000, reps), (10_000, reps)):
        for cap in CAPS:
            cells.append(CellPlan("noop", n, cap, backends, ALL_IMPLS, n_reps))
    few = config.pick_reps(3, 3)
    for cap in CAPS:
        if cap == HEADLINE_CAP:
            skip = frozenset({(IMPL_ANYIO, "uvloop")})
            cells.append(CellPlan("noop", HEADLINE_N, cap, backends, ALL_IMPLS, few, skip))
        else:
            cells.append(CellPlan("noop", HEADLINE_N, cap, two, CORE_IMPLS, few, SLOW_AT_100K))
    # FunctionModel runs cost ~3 ms of CPU each and are the noisiest cells (other processes
    # on 2 cores): many short paired repetitions give a steadier median than a few long ones.
    for cap in CAPS:
        if cap == HEADLINE_CAP:
            cells.append(CellPlan("fm", FM_N, cap, backends, FM_IMPLS, config.pick_reps(15, 5)))
        else:
            cells.append(CellPlan("fm", FM_N, cap, two, FM_IMPLS, config.pick_reps(5, 3)))
    return cells


def _other_baselines(cell: CellResult, backend: str, base: tuple[str, str] | None) -> str:
    parts = []
    for impl, short in ((IMPL_TASKGROUP, "TaskGroup"), (IMPL_ANYIO, "anyio"), (IMPL_TRIO, "trio")):
        samples = cell.get(impl, backend)
        if samples is not None and (impl, backend) != base:
            parts.append(f"{short} {fmt_us(samples.stats().median)}")
    return " · ".join(parts) or "-"


def _baseline_label(key: tuple[str, str] | None, backend: str) -> str:
    if key is None:
        return "-"
    impl, base_backend = key
    return impl if base_backend == backend else f"{impl} ({base_backend})"


def cell_rows(cell: CellResult) -> list[list[str]]:
    """Condensed rows: one per backend of the cell."""
    rows = []
    for backend in cell.plan.backends:
        murmur = cell.get(IMPL_MURMUR, backend)
        if murmur is None:
            continue
        spec = cell.get(IMPL_MURMUR_SPEC, backend)
        base_key = cell.baseline_key(backend)
        base = cell.samples.get(base_key) if base_key else None
        ratio = cell.ratio((IMPL_MURMUR, backend), base_key)
        ratio_spec = cell.ratio((IMPL_MURMUR_SPEC, backend), base_key) if spec else None
        rows.append(
            [
                cell.plan.workload,
                f"{cell.plan.n:,}",
                str(cell.plan.cap),
                backend,
                fmt_spread(murmur.stats()),
                fmt_spread(spec.stats()) if spec else "-",
                _baseline_label(base_key, backend),
                fmt_spread(base.stats()) if base else "-",
                fmt_ratio(ratio) if ratio else "-",
                fmt_ratio(ratio_spec) if ratio_spec else "-",
                _other_baselines(cell, backend, base_key),
            ]
        )
    return rows


COLUMNS = [
    "workload",
    "N",
    "cap",
    "backend",
    "murmur µs/task",
    "murmur incl. TaskSpec µs/task",
    "baseline",
    "baseline µs/task",
    "murmur ÷ baseline",
    "incl. TaskSpec ÷ baseline",
    "other baselines µs/task",
]


def _find(cells: Sequence[CellResult], workload: str, n: int, cap: int) -> CellResult | None:
    for cell in cells:
        if (cell.plan.workload, cell.plan.n, cell.plan.cap) == (workload, n, cap):
            return cell
    return None


def _headline(
    label: str, stats: Stats | None, target: float | None, headlines: list[Headline]
) -> None:
    if stats is None:
        return
    headlines.append(
        Headline(
            label=label,
            value=stats.median,
            unit="x",
            spread=f"{stats.min:.2f}-{stats.max:.2f}",
            target="" if target is None else f"≤ {target:.2f}x",
            passed=None if target is None else stats.median <= target,
        )
    )


def _best(
    label: str,
    cell: CellResult,
    candidate: tuple[str, str],
    baseline: tuple[str, str] | None,
    headlines: list[Headline],
) -> None:
    """The fastest repetition of each, divided: noise on a shared machine only adds time."""
    if baseline is None or candidate not in cell.samples or baseline not in cell.samples:
        return
    best = cell.samples[candidate].stats().min / cell.samples[baseline].stats().min
    headlines.append(Headline(label=label, value=best, unit="x"))


def summarise(cells: Sequence[CellResult]) -> list[Headline]:
    """The headline ratios, from whichever headline cells this run measured."""
    headlines: list[Headline] = []
    noop = _find(cells, "noop", HEADLINE_N, HEADLINE_CAP)
    if noop is not None:
        ref = noop.reference_key()
        n = f"{HEADLINE_N:,} no-op tasks, cap {HEADLINE_CAP}"
        _headline(
            f"{n}, asyncio: murmur ÷ asyncio.gather+Semaphore",
            noop.ratio((IMPL_MURMUR, "asyncio"), ref),
            NOOP_TARGET,
            headlines,
        )
        _best(f"{n}, asyncio: best run ÷ best run", noop, (IMPL_MURMUR, "asyncio"), ref, headlines)
        _headline(
            f"{n}, asyncio: murmur incl. TaskSpec ÷ asyncio.gather+Semaphore",
            noop.ratio((IMPL_MURMUR_SPEC, "asyncio"), ref),
            None,
            headlines,
        )
        _headline(
            f"{n}, trio: murmur ÷ trio nursery+CapacityLimiter",
            noop.ratio((IMPL_MURMUR, "trio"), (IMPL_TRIO, "trio")),
            None,
            headlines,
        )
        _headline(
            f"{n}: murmur on trio ÷ asyncio.gather+Semaphore on asyncio",
            noop.ratio((IMPL_MURMUR, "trio"), ref),
            None,
            headlines,
        )
        _headline(
            f"{n}, uvloop: murmur ÷ asyncio.gather+Semaphore",
            noop.ratio((IMPL_MURMUR, "uvloop"), (IMPL_ASYNCIO_GATHER, "uvloop")),
            None,
            headlines,
        )
    fm_cells = [c for c in cells if c.plan.workload == "fm" and c.plan.cap == HEADLINE_CAP]
    if fm_cells:
        fm = max(fm_cells, key=lambda c: (c.plan.n, c.plan.reps))
        ref = fm.reference_key()
        n = f"{fm.plan.n:,} FunctionModel tasks, cap {HEADLINE_CAP}"
        _headline(
            f"{n}, asyncio: murmur ÷ plain pydantic-ai (asyncio.gather+Semaphore)",
            fm.ratio((IMPL_MURMUR, "asyncio"), ref),
            FM_TARGET,
            headlines,
        )
        _headline(
            f"{n}, asyncio: the same by process CPU time",
            fm.ratio((IMPL_MURMUR, "asyncio"), ref, cpu=True),
            None,
            headlines,
        )
        _best(f"{n}, asyncio: best run ÷ best run", fm, (IMPL_MURMUR, "asyncio"), ref, headlines)
        _headline(
            f"{n}: murmur on trio (asyncio bridge) ÷ plain pydantic-ai on asyncio",
            fm.ratio((IMPL_MURMUR, "trio"), ref),
            None,
            headlines,
        )
        _headline(
            f"{n}: the same by process CPU time (both threads)",
            fm.ratio((IMPL_MURMUR, "trio"), ref, cpu=True),
            None,
            headlines,
        )
    return headlines


def run(config: RunConfig) -> ScenarioResult:
    started = time.perf_counter()
    plans = plan(config)
    config.log(f"  warming up ({len(plans)} cells planned)")
    warm_up(plans)
    cells = [run_cell(p, config.log) for p in plans]
    table = Table(
        "Per-task cost of gather (median [min-max] over repetitions); ratios are paired "
        "medians (min-max)",
        COLUMNS,
        [row for cell in cells for row in cell_rows(cell)],
    )
    notes = [
        "Baseline per backend: asyncio.gather+Semaphore on asyncio/uvloop, a Trio nursery + "
        "CapacityLimiter on Trio; pydantic-ai cannot run on Trio, so Murmur-on-Trio "
        "FunctionModel rows compare with plain pydantic-ai on asyncio.",
        "FunctionModel rows: the baselines run plain `pydantic_ai.Agent.run` (no Murmur).",
        "'incl. TaskSpec' builds `[TaskSpec(input=x) for x in inputs]` inside the timed "
        "region; it is measured for the no-op cells only.",
    ]
    notes.append(
        "At 100k tasks the Trio nursery baseline is measured in the cap-100 cell of the full "
        "run only; elsewhere Murmur-on-Trio is compared with asyncio.gather+Semaphore on "
        "asyncio (marked '(asyncio)')."
    )
    if config.quick:
        notes.append(
            "Quick mode: asyncio and Trio only (no uvloop); no-op N=10k (every baseline at cap "
            "100, Murmur vs asyncio.gather+Semaphore at caps 1/20/1000), the 100k headline cell "
            "(Murmur excluding TaskSpec construction only), FunctionModel N=200. The full run "
            "adds uvloop, N=1k, every cap at 100k, TaskSpec construction at 100k and "
            "FunctionModel at caps 1/20/1000 and uvloop (the full run's cap-100 FunctionModel "
            "cell has 15 repetitions)."
        )
    return ScenarioResult(
        name=NAME,
        title="In-process overhead",
        headlines=summarise(cells),
        tables=[table],
        notes=notes,
        data={"cells": [cell.to_json() for cell in cells]},
        seconds=time.perf_counter() - started,
    )


# -- plots ------------------------------------------------------------------------------


def _series(
    data: dict[str, Any], workload: str, n: int
) -> dict[tuple[str, str], list[tuple[int, float]]]:
    lines: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for cell in data["cells"]:
        if cell["workload"] != workload or cell["n"] != n:
            continue
        for row in cell["results"]:
            lines.setdefault((row["impl"], row["backend"]), []).append(
                (cell["cap"], row["per_task_us"]["median"])
            )
    return {k: sorted(v) for k, v in lines.items() if len(v) >= 2}


def _plain(value: float, _position: int) -> str:
    return f"{value:g}"


def plot(result: ScenarioResult, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    paths: list[Path] = []
    cells: list[dict[str, Any]] = result.data.get("cells", [])
    noop_ns = sorted({c["n"] for c in cells if c["workload"] == "noop"})
    sweep_n = next((n for n in (10_000, 1_000) if n in noop_ns), None)
    if sweep_n is not None:
        lines = _series(result.data, "noop", sweep_n)
        backends = [b for b in ("asyncio", "uvloop", "trio") if any(k[1] == b for k in lines)]
        fig, axes = plt.subplots(1, len(backends), figsize=(4 * len(backends), 3.6), sharey=True)
        axes_list = list(axes) if len(backends) > 1 else [axes]
        handles: dict[str, Any] = {}
        for ax, backend in zip(axes_list, backends, strict=True):
            for impl in IMPL_ORDER:
                points = lines.get((impl, backend))
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                style = "-o" if impl.startswith("murmur") else "--."
                (handle,) = ax.plot(
                    xs,
                    ys,
                    style,
                    color=IMPL_COLORS[impl],
                    label=impl,
                    linewidth=1.8 if impl == IMPL_MURMUR else 1,
                )
                handles[impl] = handle
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(_plain))
            ax.yaxis.set_minor_formatter(FuncFormatter(_plain))
            ax.tick_params(axis="y", which="minor", labelsize=6)
            ax.set_title(f"{backend}", fontsize=9)
            ax.set_xlabel("max_concurrency")
            ax.grid(alpha=0.3, which="both")
        axes_list[0].set_ylabel("µs per task (median, log)")
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="lower center",
            ncol=3,
            fontsize=7,
            frameon=False,
        )
        fig.suptitle(f"No-op function agents, N={sweep_n:,}: per-task cost vs cap", fontsize=10)
        paths.append(save_figure(fig, out_dir / "overhead_noop_caps.png", rect=(0, 0.12, 1, 1)))

    # Ratio of murmur to the backend's baseline at the headline cap, per N.
    bars: list[tuple[str, str, float, float, float]] = []
    for cell in cells:
        if cell["cap"] != HEADLINE_CAP:
            continue
        for row in cell["results"]:
            ratio = row.get("ratio_vs_baseline")
            if row["impl"] == IMPL_MURMUR and ratio:
                label = f"{cell['workload']}\nN={cell['n']:,}"
                bars.append((label, row["backend"], ratio["median"], ratio["min"], ratio["max"]))
    if bars:
        labels = list(dict.fromkeys(bar[0] for bar in bars))
        backends = list(dict.fromkeys(bar[1] for bar in bars))
        width = 0.8 / len(backends)
        fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(labels)), 3.4))
        for j, backend in enumerate(backends):
            pos: list[float] = []
            val: list[float] = []
            lo: list[float] = []
            hi: list[float] = []
            for i, label in enumerate(labels):
                for bar in bars:
                    if bar[0] == label and bar[1] == backend:
                        pos.append(i + (j - (len(backends) - 1) / 2) * width)
                        val.append(bar[2])
                        lo.append(bar[2] - bar[3])
                        hi.append(bar[4] - bar[2])
            ax.bar(pos, val, width, yerr=[lo, hi], capsize=2, label=backend)
        ax.axhline(NOOP_TARGET, color="red", linestyle="--", linewidth=1, label="no-op target 2x")
        ax.axhline(FM_TARGET, color="purple", linestyle=":", linewidth=1, label="FM target 1.15x")
        ax.axhline(1.0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylabel("murmur ÷ baseline (paired median)")
        ax.set_title(
            f"Murmur ÷ raw baseline, cap {HEADLINE_CAP} (Trio: ÷ Trio nursery; FunctionModel "
            "on Trio: ÷ pydantic-ai on asyncio)",
            fontsize=8,
        )
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        paths.append(save_figure(fig, out_dir / "overhead_ratios.png"))
    return paths


register(
    Scenario(
        name=NAME,
        title="In-process overhead",
        description=(
            "Per-task cost of AgentRuntime.gather with no-op function agents (N 1k-100k) and "
            "pydantic-ai FunctionModel agents, caps 1/20/100/1000, on asyncio, uvloop and "
            "Trio, against asyncio.gather+Semaphore, asyncio.TaskGroup+Semaphore, an AnyIO "
            "task group + CapacityLimiter and a Trio nursery + CapacityLimiter."
        ),
        run=run,
        plot=plot,
        order=10,
    )
)
