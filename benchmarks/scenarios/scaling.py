"""Scenario "scaling": per-task cost from 1k to 100k tasks, and peak memory at 100k.

Murmur's gather runs a pool of ``max_concurrency`` workers over one shared index
iterator, so its per-task cost should stay flat as N grows and its memory should grow
only with the inputs and results — not with one coroutine per task, as
``asyncio.gather`` over N coroutines does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..cells import CellPlan, CellResult, run_cell, warm_up
from ..harness import available_backends, fmt_ratio, fmt_spread, save_figure
from ..memprobe import probe_in_subprocess
from ..registry import Headline, RunConfig, Scenario, ScenarioResult, Table, register
from ..workloads import IMPL_ASYNCIO_GATHER, IMPL_MURMUR, IMPL_TRIO

__all__ = ["run"]

NAME = "scaling"
CAP = 100
MEMORY_N = 100_000
MEMORY_IMPLS: tuple[tuple[str, str], ...] = (
    (IMPL_MURMUR, "asyncio"),
    (IMPL_ASYNCIO_GATHER, "asyncio"),
    (IMPL_MURMUR, "trio"),
    (IMPL_TRIO, "trio"),
)


def _mb(value: float) -> float:
    return value / (1024 * 1024)


def _memory(config: RunConfig, backends: tuple[str, ...]) -> list[dict[str, Any]]:
    modes = ("rss",) if config.quick else ("rss", "tracemalloc")
    impls = [(i, b) for i, b in MEMORY_IMPLS if b in backends]
    if config.quick:
        impls = [(i, b) for i, b in impls if b == "asyncio"]
    rows: list[dict[str, Any]] = []
    for impl, backend in impls:
        row: dict[str, Any] = {"impl": impl, "backend": backend, "n": MEMORY_N, "cap": CAP}
        for mode in modes:
            row[mode] = probe_in_subprocess(impl, backend, MEMORY_N, CAP, mode)
        config.log(f"    memory {impl} on {backend}: done")
        rows.append(row)
    return rows


def _growth_mb(row: dict[str, Any]) -> float:
    rss = row["rss"]
    return float(rss["rss_peak_kb"] - rss["rss_before_batch_kb"]) / 1024


def _memory_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for row in rows:
        rss = row["rss"]
        growth = _growth_mb(row)
        trace = row.get("tracemalloc")
        out.append(
            [
                row["impl"],
                row["backend"],
                f"{row['n']:,}",
                f"{rss['rss_before_batch_kb'] / 1024:.0f}",
                f"{growth:.1f}",
                f"{growth * 1024 * 1024 / row['n']:.0f}",
                "-" if trace is None else f"{_mb(trace['inputs_bytes']):.1f}",
                "-" if trace is None else f"{_mb(trace['batch_peak_bytes']):.1f}",
                "-" if trace is None else f"{trace['batch_peak_bytes'] / row['n']:.0f}",
            ]
        )
    return out


def run(config: RunConfig) -> ScenarioResult:
    started = time.perf_counter()
    backends = tuple(b for b in available_backends(config.backends) if b in ("asyncio", "trio"))
    sizes = (1_000, 10_000, 30_000) if config.quick else (1_000, 3_000, 10_000, 30_000, 100_000)
    impls = (IMPL_MURMUR, IMPL_ASYNCIO_GATHER, IMPL_TRIO)
    # The Trio nursery baseline costs ~5 s a repetition at 100k: full run only.
    exclude = frozenset({(IMPL_TRIO, "trio")}) if config.quick else frozenset()
    plans = [
        CellPlan(
            "noop",
            n,
            CAP,
            backends,
            impls,
            config.pick_reps(7 if n <= 10_000 else 4, 3),
            exclude,
        )
        for n in sizes
    ]
    warm_up(plans)
    cells: list[CellResult] = [run_cell(p, config.log) for p in plans]

    rows = []
    for cell in cells:
        for key, samples in cell.samples.items():
            base = cell.baseline_key(key[1])
            ratio = cell.ratio(key, base) if base != key else None
            rows.append(
                [
                    f"{cell.plan.n:,}",
                    key[1],
                    key[0],
                    fmt_spread(samples.stats()),
                    "-" if ratio is None else fmt_ratio(ratio),
                ]
            )
    headlines: list[Headline] = []
    flatness: dict[str, float] = {}
    first, last = cells[0], cells[-1]
    for key in first.samples:
        a, b = first.samples.get(key), last.samples.get(key)
        if a is None or b is None:
            continue
        flat = b.stats().median / a.stats().median
        best = b.stats().min / a.stats().min
        flatness[f"{key[0]}@{key[1]}"] = flat
        flatness[f"{key[0]}@{key[1]} (best runs)"] = best
        if key[0] == IMPL_MURMUR:
            headlines.append(
                Headline(
                    label=f"scaling, {key[1]}: murmur per-task cost at N={last.plan.n:,} ÷ at "
                    f"N={first.plan.n:,}, best runs (flat = 1.0; medians: {flat:.2f}x)",
                    value=best,
                    unit="x",
                )
            )
    memory = _memory(config, backends)
    by_key = {(row["impl"], row["backend"]): row for row in memory}
    for backend, base_impl in (("asyncio", IMPL_ASYNCIO_GATHER), ("trio", IMPL_TRIO)):
        row = by_key.get((IMPL_MURMUR, backend))
        if row is None:
            continue
        base_row = by_key.get((base_impl, backend))
        versus = "" if base_row is None else f" ({base_impl}: {_growth_mb(base_row):.0f} MB)"
        headlines.append(
            Headline(
                label=f"peak memory, {MEMORY_N:,} no-op tasks on {backend}: murmur peak RSS "
                f"growth during gather{versus}",
                value=_growth_mb(row),
                unit="MB",
            )
        )
    tables = [
        Table(
            f"Per-task cost vs N (no-op function agents, cap {CAP}; median [min-max])",
            ["N", "backend", "implementation", "µs/task", "÷ baseline"],
            rows,
        ),
        Table(
            f"Peak memory at {MEMORY_N:,} tasks (fresh process per measurement)",
            [
                "implementation",
                "backend",
                "N",
                "RSS before batch MB",
                "peak RSS growth in batch MB",
                "B/task (RSS)",
                "inputs+specs MB (tracemalloc)",
                "batch peak MB (tracemalloc)",
                "B/task (tracemalloc)",
            ],
            _memory_rows(memory),
        ),
    ]
    notes = [
        "Flatness: per-task cost at the largest N divided by that at the smallest N, from "
        "the fastest repetition of each (noise only adds time; small-N runs last a few ms "
        "and are the most exposed to it) and from the medians.",
        "Peak RSS growth = the kernel's RSS high-water mark during the batch (VmHWM, reset "
        "just before it) minus the RSS just before it, with inputs and TaskSpecs already "
        "built; tracemalloc batch peak = Python allocations at the batch's peak above what "
        "existed before it (results included). Murmur's inputs are TaskSpecs, the "
        "baselines' plain strings: 'inputs+specs' shows what the TaskSpecs themselves cost.",
    ]
    if config.quick:
        notes.append(
            "Quick mode: N = 1k/10k/30k without the Trio nursery baseline, memory by RSS "
            "only and on asyncio only (full run: N up to 100k, the Trio nursery baseline, "
            "tracemalloc, Trio)."
        )
    return ScenarioResult(
        name=NAME,
        title="Scaling",
        headlines=headlines,
        tables=tables,
        notes=notes,
        data={
            "cells": [cell.to_json() for cell in cells],
            "flatness": flatness,
            "memory": memory,
        },
        seconds=time.perf_counter() - started,
    )


def plot(result: ScenarioResult, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells: list[dict[str, Any]] = result.data.get("cells", [])
    if not cells:
        return []
    lines: dict[str, list[tuple[int, float, float, float]]] = {}
    for cell in cells:
        for row in cell["results"]:
            stats = row["per_task_us"]
            lines.setdefault(f"{row['impl']} ({row['backend']})", []).append(
                (cell["n"], stats["median"], stats["min"], stats["max"])
            )
    memory: list[dict[str, Any]] = result.data.get("memory", [])
    fig, axes = plt.subplots(1, 2 if memory else 1, figsize=(9.5 if memory else 5, 3.4))
    ax = axes[0] if memory else axes
    for label, points in sorted(lines.items()):
        points.sort()
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        err = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
        style = "-o" if label.startswith("murmur") else "--."
        ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=2, label=label, linewidth=1.2)
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("N tasks")
    ax.set_ylabel("µs per task (median)")
    ax.set_title("No-op function agents, cap 100", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if memory:
        mem_ax = axes[1]
        labels = [f"{row['impl'].split('+')[0]}\n{row['backend']}" for row in memory]
        growth = [_growth_mb(row) for row in memory]
        colors = ["tab:blue" if row["impl"] == IMPL_MURMUR else "tab:gray" for row in memory]
        mem_ax.bar(range(len(growth)), growth, color=colors)
        mem_ax.set_xticks(range(len(labels)), labels, fontsize=7)
        mem_ax.set_ylabel("peak RSS growth during batch (MB)")
        mem_ax.set_title(f"Memory, {MEMORY_N:,} no-op tasks", fontsize=9)
        mem_ax.grid(axis="y", alpha=0.3)
    return [save_figure(fig, out_dir / "scaling.png")]


register(
    Scenario(
        name=NAME,
        title="Scaling",
        description=(
            "Per-task cost of gather with no-op function agents from 1k to 100k tasks (should "
            "stay flat), and peak memory of a 100k-task batch measured in a fresh process "
            "(ru_maxrss and tracemalloc), against the raw baselines."
        ),
        run=run,
        plot=plot,
        order=30,
    )
)
