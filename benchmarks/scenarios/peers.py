"""Scenario "peers": the same workloads on other runtimes, each in its own virtualenv.

Peers so far: the PyPI package ``murmur-runtime`` 0.1.0 (another project with the same
seed API, ``from murmur import AgentRuntime, TaskSpec`` — same import name, hence its own
virtualenv under ``benchmarks/.venvs/``) and plain pydantic-ai under
``asyncio.gather`` + ``asyncio.Semaphore``. Each process compares its runtime with plain
pydantic-ai *in that process* (paired, interleaved), so the "÷ plain pydantic-ai" column
is robust; comparisons across processes (and across pydantic-ai versions) are medians
measured minutes apart and carry more noise. The measurements alternate in blocks
(peer process, then this process, twice in the full run) to spread drift over both.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ..cells import CellPlan, CellResult, run_cell, warm_up
from ..harness import Samples, Stats, Timing, fmt_ratio, fmt_spread, paired_ratio, save_figure
from ..peer_venv import PeerSpec, ensure_venv, run_peer_script
from ..registry import Headline, RunConfig, Scenario, ScenarioResult, Status, Table, register
from ..workloads import IMPL_ASYNCIO_GATHER, IMPL_MURMUR, IO_SLEEP_S

__all__ = ["MURMUR_RUNTIME", "run"]

NAME = "peers"
#: With its ``redis`` extra: the ``distributed`` scenario runs the same virtualenv.
MURMUR_RUNTIME = PeerSpec(
    dist="murmur-runtime",
    version="0.1.0",
    import_name="murmur",
    script="murmur_runtime_peer.py",
    extras=("redis",),
)
PEER_OFF = "murmur-runtime (events off)"
PEER_DEFAULT = "murmur-runtime (default log events)"
PLAIN = IMPL_ASYNCIO_GATHER  # plain pydantic-ai under asyncio.gather + Semaphore

OURS = "murmur (this repo)"
OURS_PLAIN = "plain pydantic-ai (our venv)"
PEER_PLAIN = "plain pydantic-ai (peer venv)"


def _cells(quick: bool) -> tuple[list[dict[str, Any]], int]:
    """The peer cells (each with its per-block repetitions) and the number of blocks."""
    all_impls = [PEER_OFF, PEER_DEFAULT, PLAIN]
    if quick:
        return [
            {"workload": "fm-structured", "n": 100, "cap": 20, "reps": 2, "impls": all_impls}
        ], 1
    return [
        {"workload": "fm-structured", "n": 300, "cap": 20, "reps": 3, "impls": all_impls},
        {"workload": "fm-structured", "n": 300, "cap": 100, "reps": 3, "impls": all_impls},
        {
            "workload": "fm-structured-sleep",
            "n": 1000,
            "cap": 20,
            "reps": 2,
            "impls": [PEER_OFF, PLAIN],
        },
    ], 2


def _merge(
    into: dict[tuple[str, int, int], dict[str, Samples]],
    key: tuple[str, int, int],
    name: str,
    samples: Samples,
) -> None:
    bucket = into.setdefault(key, {})
    if name in bucket:
        bucket[name].timings.extend(samples.timings)
    else:
        bucket[name] = Samples(name, "asyncio", samples.n_tasks, list(samples.timings))


def _skipped(reason: str, quick: bool) -> ScenarioResult:
    hint = (
        "run the full suite once (or `python -m benchmarks --only peers --setup-peers`) to "
        "create it"
    )
    return ScenarioResult(
        name=NAME,
        title="Peers",
        status="skipped",
        tables=[
            Table(
                "Peers",
                ["peer", "status"],
                [
                    [
                        MURMUR_RUNTIME.requirement,
                        f"skipped: {reason}" + (f"; {hint}" if quick else ""),
                    ]
                ],
            )
        ],
        notes=[f"Peer comparison skipped: {reason}."],
        data={"skipped": reason},
    )


def run(config: RunConfig) -> ScenarioResult:
    started = time.perf_counter()
    create = config.setup_peers if config.setup_peers is not None else not config.quick
    python, info = ensure_venv(MURMUR_RUNTIME, config.venvs_dir, create=create, log=config.log)
    if python is None:
        return _skipped(str(info.get("error")), config.quick)
    peer_cells, blocks = _cells(config.quick)
    if config.reps is not None:
        peer_cells = [{**c, "reps": max(1, config.reps // blocks)} for c in peer_cells]
    plans = [
        CellPlan(
            c["workload"],
            c["n"],
            c["cap"],
            ("asyncio",),
            (IMPL_MURMUR, IMPL_ASYNCIO_GATHER),
            c["reps"],
        )
        for c in peer_cells
    ]
    warm_up(plans)
    samples: dict[tuple[str, int, int], dict[str, Samples]] = {}
    peaks: dict[tuple[str, int, int], dict[str, int]] = {}
    errors: list[str] = []
    peer_out: dict[str, Any] = {}
    for block in range(blocks):
        config.log(
            f"    block {block + 1}/{blocks}: {MURMUR_RUNTIME.requirement} "
            f"in {python.parent.parent.name}"
        )
        peer_out = run_peer_script(python, MURMUR_RUNTIME, {"cells": peer_cells})
        for cell in peer_out["cells"]:
            key = (cell["workload"], cell["n"], cell["cap"])
            for row in cell["results"]:
                name = PEER_PLAIN if row["impl"] == PLAIN else row["impl"]
                errors.extend(f"{name}: {e}" for e in row["errors"])
                timings = [Timing(w, c) for w, c in zip(row["wall_s"], row["cpu_s"], strict=True)]
                _merge(samples, key, name, Samples(name, "asyncio", cell["n"], timings))
                peaks.setdefault(key, {})[name] = max(peaks.get(key, {}).get(name, 0), row["peak"])
        config.log(f"    block {block + 1}/{blocks}: this repo's murmur and plain pydantic-ai")
        for plan in plans:
            result: CellResult = run_cell(plan, config.log)
            key = (plan.workload, plan.n, plan.cap)
            _merge(samples, key, OURS, result.samples[(IMPL_MURMUR, "asyncio")])
            _merge(samples, key, OURS_PLAIN, result.samples[(IMPL_ASYNCIO_GATHER, "asyncio")])

    venv_of = {
        OURS: "ours: pydantic-ai " + _our_pydantic_ai(),
        OURS_PLAIN: "ours: pydantic-ai " + _our_pydantic_ai(),
        PEER_OFF: f"{MURMUR_RUNTIME.venv_name}: pydantic-ai {peer_out.get('pydantic_ai')}",
        PEER_DEFAULT: f"{MURMUR_RUNTIME.venv_name}: pydantic-ai {peer_out.get('pydantic_ai')}",
        PEER_PLAIN: f"{MURMUR_RUNTIME.venv_name}: pydantic-ai {peer_out.get('pydantic_ai')}",
    }
    plain_of = {OURS: OURS_PLAIN, PEER_OFF: PEER_PLAIN, PEER_DEFAULT: PEER_PLAIN}
    rows: list[list[str]] = []
    data_cells: list[dict[str, Any]] = []
    headlines: list[Headline] = []
    for (workload, n, cap), by_impl in samples.items():
        ours = by_impl.get(OURS)
        sleeps = workload.endswith("sleep")
        ideal = math.ceil(n / cap) * IO_SLEEP_S
        cell_json: dict[str, Any] = {"workload": workload, "n": n, "cap": cap, "results": []}
        for name in (OURS, OURS_PLAIN, PEER_OFF, PEER_DEFAULT, PEER_PLAIN):
            item = by_impl.get(name)
            if item is None:
                continue
            stats = item.stats()
            vs_plain: Stats | None = None
            if name in plain_of and plain_of[name] in by_impl:
                vs_plain = paired_ratio(item.per_task_us, by_impl[plain_of[name]].per_task_us)
            vs_ours = (
                stats.median / ours.stats().median if ours is not None and name != OURS else None
            )
            fidelity = Stats.of([ideal / w * 100 for w in item.wall]) if sleeps else None
            rows.append(
                [
                    workload,
                    f"{n:,}",
                    str(cap),
                    name,
                    venv_of[name],
                    fmt_spread(stats),
                    "-" if vs_plain is None else fmt_ratio(vs_plain),
                    "-" if vs_ours is None else f"{vs_ours:.2f}x",
                    "-" if fidelity is None else f"{fidelity.median:.1f}%",
                ]
            )
            row_json = item.to_json()
            row_json["impl"] = name
            row_json["ratio_vs_plain_pydantic_ai_same_venv"] = (
                None if vs_plain is None else vs_plain.to_json()
            )
            row_json["median_ratio_vs_ours"] = vs_ours
            row_json["fidelity_pct"] = None if fidelity is None else fidelity.to_json()
            row_json["peak_in_flight"] = peaks.get((workload, n, cap), {}).get(name)
            cell_json["results"].append(row_json)
            if name == PEER_OFF and vs_plain is not None and not sleeps:
                headlines.append(
                    Headline(
                        label=f"peers, {n} FunctionModel tasks cap {cap}: murmur-runtime 0.1.0 "
                        "(events off) ÷ plain pydantic-ai in its venv",
                        value=vs_plain.median,
                        unit="x",
                        spread=f"{vs_plain.min:.2f}-{vs_plain.max:.2f}",
                    )
                )
            if name == OURS and vs_plain is not None and not sleeps:
                headlines.append(
                    Headline(
                        label=f"peers, {n} FunctionModel tasks cap {cap}: this murmur ÷ plain "
                        "pydantic-ai in our venv",
                        value=vs_plain.median,
                        unit="x",
                        spread=f"{vs_plain.min:.2f}-{vs_plain.max:.2f}",
                    )
                )
        data_cells.append(cell_json)

    notes = [
        "Workload: pydantic-ai Agent(FunctionModel, output_type=Answer, instructions=...) — a "
        "structured output, because murmur-runtime requires a BaseModel output_type; the "
        "-sleep variant's async model sleeps 10 ms (achieved ÷ ideal as in the cap-fidelity "
        "scenario). TaskSpecs are built before the clock in both runtimes.",
        "'÷ plain pydantic-ai' is paired within one process and one pydantic-ai version; "
        "'÷ our murmur' divides medians measured in different processes and pydantic-ai "
        "versions (peer venv: the versions murmur-runtime pins).",
        "murmur-runtime (events off) uses event_emitter=MultiEventEmitter([]); '(default log "
        "events)' keeps its default LogEventEmitter with structlog output sent to /dev/null.",
    ]
    for key, text in peer_out.get("not_expressible", {}).items():
        notes.append(f"Not expressible with murmur-runtime 0.1.0 ({key}): {text}.")
    if errors:
        notes.append(f"Peer errors (rows affected are not valid): {errors[:3]}")
    status: Status = "ok"
    if config.quick:
        status = "reduced"
        notes.append(
            "Quick mode: reduced to one FunctionModel cell (N=100, cap 20, 2 repetitions); the "
            "full run measures N=300 at caps 20 and 100 and the sleeping-model cap-fidelity "
            "workload, in two alternating blocks."
        )
    return ScenarioResult(
        name=NAME,
        title="Peers",
        status=status,
        headlines=headlines,
        tables=[
            Table(
                "Peers: per-task cost (median [min-max]) and ratios",
                [
                    "workload",
                    "N",
                    "cap",
                    "implementation",
                    "venv",
                    "µs/task",
                    "÷ plain pydantic-ai (same venv)",
                    "÷ our murmur",
                    "achieved ÷ ideal",
                ],
                rows,
            )
        ],
        notes=notes,
        data={
            "peer": info,
            "peer_report": {k: v for k, v in peer_out.items() if k != "cells"},
            "cells": data_cells,
            "errors": errors,
        },
        seconds=time.perf_counter() - started,
    )


def _our_pydantic_ai() -> str:
    import importlib.metadata

    return importlib.metadata.version("pydantic-ai-slim")


def plot(result: ScenarioResult, out_dir: Path) -> list[Path]:
    cells: list[dict[str, Any]] = [
        c for c in result.data.get("cells", []) if not c["workload"].endswith("sleep")
    ]
    if not cells:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = [OURS, OURS_PLAIN, PEER_OFF, PEER_DEFAULT, PEER_PLAIN]
    colors = dict(
        zip(names, ["tab:blue", "lightsteelblue", "tab:orange", "navajowhite", "tan"], strict=True)
    )
    ticks = [f"N={c['n']} cap {c['cap']}" for c in cells]
    for ax, field, candidates in (
        (left, "per_task_us", names),
        (right, "ratio_vs_plain_pydantic_ai_same_venv", [OURS, PEER_OFF, PEER_DEFAULT]),
    ):
        width = 0.8 / len(candidates)
        for j, name in enumerate(candidates):
            pos: list[float] = []
            val: list[float] = []
            lo: list[float] = []
            hi: list[float] = []
            for i, cell in enumerate(cells):
                for row in cell["results"]:
                    stats = row.get(field)
                    if row["impl"] == name and stats:
                        pos.append(i + (j - (len(candidates) - 1) / 2) * width)
                        val.append(stats["median"])
                        lo.append(stats["median"] - stats["min"])
                        hi.append(stats["max"] - stats["median"])
            if pos:
                ax.bar(pos, val, width, yerr=[lo, hi], capsize=2, color=colors[name], label=name)
        ax.set_xticks(range(len(cells)), ticks, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    left.set_ylabel("µs per task (median)")
    left.set_title("Per-task cost, FunctionModel (structured output)", fontsize=9)
    right.axhline(1.0, color="black", linewidth=0.8)
    right.set_ylabel("÷ plain pydantic-ai, same venv")
    right.set_title("Paired ratio to plain pydantic-ai in the same process", fontsize=9)
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=7, frameon=False)
    return [save_figure(fig, out_dir / "peers.png", rect=(0, 0.08, 1, 1))]


register(
    Scenario(
        name=NAME,
        title="Peers",
        description=(
            "The in-process FunctionModel workloads on murmur-runtime 0.1.0 (PyPI; own "
            "virtualenv under benchmarks/.venvs/, run as a subprocess printing JSON) and plain "
            "pydantic-ai under asyncio.gather+Semaphore; workloads it cannot express are listed."
        ),
        run=run,
        plot=plot,
        order=40,
    )
)
