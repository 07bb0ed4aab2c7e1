"""Scenario "groups": a 3-node agent group fanning 1,000 items out and back in.

``fan_out`` (a function agent) returns a model whose ``FanOut[list[Item]]`` field holds
1,000 items; the group sends one task per item to ``process`` with ``max_concurrency``
100, and ``reduce`` receives the list of results and sums it. The baselines do the same
by hand with the same three functions: an AnyIO task group + ``CapacityLimiter`` (every
backend) and ``asyncio.gather`` + ``Semaphore`` (asyncio). Two variants of ``process``: a
no-op (what is left is the group machinery's own cost per item) and a 1 ms
``anyio.sleep`` (I/O-bound: achieved vs ideal time, ``ceil(1000 / 100) x 1 ms``).
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel

from murmur import AgentGroup, Edge, FanOut, TaskSpec

from ..harness import (
    Contender,
    Samples,
    Stats,
    Timing,
    available_backends,
    draw_bars,
    fmt_ratio,
    fmt_spread,
    interleave,
    paired_ratio,
    run_on,
    save_figure,
    timed,
)
from ..registry import Headline, RunConfig, Scenario, ScenarioResult, Table, register
from ..workloads import make_runtime

__all__ = ["ITEMS", "IO_SLEEP_S", "GroupCell", "measure", "run"]

NAME = "groups"
ITEMS = 1_000
CAP = 100
IO_SLEEP_S = 0.001

IMPL_GROUP = "murmur run_group"
IMPL_ANYIO = "anyio TaskGroup+CapacityLimiter"
IMPL_GATHER = "asyncio.gather+Semaphore"
IMPL_MURMUR_GATHER = "murmur gather by hand"
IMPLS = (IMPL_GROUP, IMPL_MURMUR_GATHER, IMPL_ANYIO, IMPL_GATHER)


class Item(BaseModel):
    index: int


class Plan(BaseModel):
    items: FanOut[list[Item]]


# -- the three nodes (function agents; their names are the node names) -------------------


async def fan_out(count: str) -> Plan:
    return Plan(items=[Item(index=i) for i in range(int(count))])


async def process(item: Item) -> int:
    return item.index


async def process_io(item: Item) -> int:
    await anyio.sleep(IO_SLEEP_S)
    return item.index


async def reduce(values: list[int]) -> int:
    return sum(values)


PROCESSORS: dict[str, Callable[[Item], Awaitable[int]]] = {"noop": process, "io": process_io}


@functools.cache
def build_group(variant: str) -> AgentGroup:
    """fan_out -> (one task per item, cap 100) -> process -> reduce (terminal)."""
    middle = PROCESSORS[variant]
    return AgentGroup(
        name=f"fan-{variant}",
        topology={
            fan_out: Edge(to=(middle,), max_concurrency=CAP),
            middle: Edge(to=(reduce,)),
            reduce: Edge.terminal(),
        },
    )


def expected(n: int) -> int:
    return n * (n - 1) // 2


# -- the implementations -----------------------------------------------------------------


async def _run_group(variant: str, n: int) -> Timing:
    group = build_group(variant)
    async with make_runtime() as runtime:
        timing, result = await timed(lambda: runtime.run_group(group, TaskSpec(input=str(n))))
    if not result.is_ok():
        raise AssertionError(f"group failed: {result.error!r}") from result.error
    slots = result.slots[PROCESSORS[variant].__name__]
    if len(slots) != n or result.output != expected(n):
        raise AssertionError(f"group: {len(slots)} slots, output {result.output!r}")
    return timing


async def _run_murmur_gather(variant: str, n: int) -> Timing:
    """The fan-out through ``runtime.gather``, the fan-in by hand: the group minus its graph."""
    middle = PROCESSORS[variant]
    async with make_runtime() as runtime:

        async def batch() -> int:
            plan = await fan_out(str(n))
            results = await runtime.gather(
                middle, [TaskSpec(input=item) for item in plan.items], max_concurrency=CAP
            )
            return await reduce([r.unwrap() for r in results])

        timing, output = await timed(batch)
    if output != expected(n):
        raise AssertionError(f"murmur gather: output {output!r}")
    return timing


async def _run_anyio(variant: str, n: int) -> Timing:
    middle = PROCESSORS[variant]

    async def batch() -> int:
        plan = await fan_out(str(n))
        outputs: list[Any] = [None] * len(plan.items)
        limiter = anyio.CapacityLimiter(CAP)

        async def one(index: int, item: Item) -> None:
            async with limiter:
                outputs[index] = await middle(item)

        async with anyio.create_task_group() as tg:
            for index, item in enumerate(plan.items):
                tg.start_soon(one, index, item)
        return await reduce(outputs)

    timing, output = await timed(batch)
    if output != expected(n):
        raise AssertionError(f"anyio baseline: output {output!r}")
    return timing


async def _run_gather(variant: str, n: int) -> Timing:
    middle = PROCESSORS[variant]

    async def batch() -> int:
        plan = await fan_out(str(n))
        semaphore = asyncio.Semaphore(CAP)

        async def one(item: Item) -> int:
            async with semaphore:
                return await middle(item)

        return await reduce(list(await asyncio.gather(*[one(x) for x in plan.items])))

    timing, output = await timed(batch)
    if output != expected(n):
        raise AssertionError(f"asyncio.gather baseline: output {output!r}")
    return timing


_RUNNERS: dict[str, Callable[[str, int], Awaitable[Timing]]] = {
    IMPL_GROUP: _run_group,
    IMPL_MURMUR_GATHER: _run_murmur_gather,
    IMPL_ANYIO: _run_anyio,
    IMPL_GATHER: _run_gather,
}


def contenders(variant: str, n: int, backends: Sequence[str]) -> list[Contender]:
    out = []
    for backend in backends:
        for impl in IMPLS:
            if impl == IMPL_GATHER and backend not in ("asyncio", "uvloop"):
                continue
            main = functools.partial(_RUNNERS[impl], variant, n)
            out.append(Contender(impl, backend, functools.partial(run_on, backend, main)))
    return out


def sleep_latency(backend: str, count: int = 50) -> float:
    """Mean duration of one ``anyio.sleep(IO_SLEEP_S)`` on ``backend``, slept in sequence."""

    async def main() -> float:
        started = time.perf_counter()
        for _ in range(count):
            await anyio.sleep(IO_SLEEP_S)
        return (time.perf_counter() - started) / count

    return run_on(backend, main)


@dataclass
class GroupCell:
    """Every implementation of one variant on some backends."""

    variant: str
    n: int
    backends: tuple[str, ...]
    reps: int
    samples: dict[tuple[str, str], Samples]
    seconds: float
    #: Measured duration of one 1 ms sleep per backend (I/O variant only).
    latency: dict[str, float] | None = None

    @property
    def ideal_s(self) -> float | None:
        if self.variant != "io":
            return None
        return math.ceil(self.n / CAP) * IO_SLEEP_S

    def ratio(self, impl: str, backend: str, base_impl: str = IMPL_ANYIO) -> Stats | None:
        mine, base = self.samples.get((impl, backend)), self.samples.get((base_impl, backend))
        if mine is None or base is None:
            return None
        return paired_ratio(mine.per_task_us, base.per_task_us)

    def achieved(self, impl: str, backend: str, *, calibrated: bool = False) -> Stats | None:
        """Ideal time ÷ measured wall time, in %, one value per repetition."""
        samples = self.samples.get((impl, backend))
        ideal = self.ideal_s
        if samples is None or ideal is None:
            return None
        if calibrated:
            if self.latency is None or backend not in self.latency:
                return None
            ideal = math.ceil(self.n / CAP) * self.latency[backend]
        return Stats.of([ideal / wall * 100 for wall in samples.wall])

    def to_json(self) -> dict[str, Any]:
        rows = []
        for (impl, backend), samples in self.samples.items():
            row = samples.to_json()
            for base in (IMPL_ANYIO, IMPL_GATHER, IMPL_MURMUR_GATHER):
                ratio = self.ratio(impl, backend, base) if impl != base else None
                row[f"ratio_vs_{base}"] = None if ratio is None else ratio.to_json()
            achieved = self.achieved(impl, backend)
            row["achieved_pct"] = None if achieved is None else achieved.to_json()
            calibrated = self.achieved(impl, backend, calibrated=True)
            row["calibrated_achieved_pct"] = None if calibrated is None else calibrated.to_json()
            rows.append(row)
        return {
            "variant": self.variant,
            "items": self.n,
            "cap": CAP,
            "reps": self.reps,
            "ideal_s": self.ideal_s,
            "sleep_latency_s": self.latency,
            "seconds": round(self.seconds, 2),
            "results": rows,
        }


def measure(variant: str, n: int, backends: tuple[str, ...], reps: int) -> GroupCell:
    """Warm up, then run every implementation ``reps`` times, interleaved."""
    started = time.perf_counter()
    io = variant == "io"
    before = {b: sleep_latency(b) for b in backends} if io else {}
    samples = interleave(contenders(variant, n, backends), n, reps, warmup=True)
    latency = {b: (before[b] + sleep_latency(b)) / 2 for b in backends} if io else None
    return GroupCell(variant, n, backends, reps, samples, time.perf_counter() - started, latency)


def _pct(stats: Stats | None) -> str:
    if stats is None:
        return "-"
    return f"{stats.median:.1f}% [{stats.min:.1f}-{stats.max:.1f}]"


def _rows(cell: GroupCell) -> list[list[str]]:
    rows = []
    for (impl, backend), samples in cell.samples.items():
        wall = Stats.of(samples.wall)
        vs_anyio = cell.ratio(impl, backend) if impl != IMPL_ANYIO else None
        vs_gather = cell.ratio(impl, backend, IMPL_GATHER) if impl != IMPL_GATHER else None
        vs_murmur = cell.ratio(impl, backend, IMPL_MURMUR_GATHER) if impl == IMPL_GROUP else None
        rows.append(
            [
                "no-op" if cell.variant == "noop" else f"{IO_SLEEP_S * 1000:.0f} ms sleep",
                backend,
                impl,
                fmt_spread(samples.stats()),
                f"{wall.median * 1000:.1f}",
                "-" if vs_anyio is None else fmt_ratio(vs_anyio),
                "-" if vs_gather is None else fmt_ratio(vs_gather),
                "-" if vs_murmur is None else fmt_ratio(vs_murmur),
                _pct(cell.achieved(impl, backend)),
                _pct(cell.achieved(impl, backend, calibrated=True)),
            ]
        )
    return rows


COLUMNS = [
    "process",
    "backend",
    "implementation",
    "µs/item",
    "wall ms",
    "÷ anyio TaskGroup (paired)",
    "÷ asyncio.gather (paired)",
    "÷ murmur gather by hand (paired)",
    "achieved ÷ ideal",
    "÷ timer-calibrated ideal",
]


def summarise(cells: Sequence[GroupCell]) -> list[Headline]:
    headlines: list[Headline] = []
    for cell in cells:
        what = "no-op" if cell.variant == "noop" else f"{IO_SLEEP_S * 1000:.0f} ms I/O"
        prefix = f"group fan-out/in, {cell.n:,} {what} items, cap {CAP}"
        for backend in cell.backends:
            for base in (IMPL_ANYIO, IMPL_GATHER, IMPL_MURMUR_GATHER):
                stats = cell.ratio(IMPL_GROUP, backend, base)
                if stats is None:
                    continue
                headlines.append(
                    Headline(
                        label=f"{prefix}, {backend}: murmur run_group ÷ {base}"
                        + ("" if base == IMPL_MURMUR_GATHER else " by hand"),
                        value=stats.median,
                        unit="x",
                        spread=f"{stats.min:.2f}-{stats.max:.2f}",
                    )
                )
            if cell.variant == "noop":
                stats = cell.samples[(IMPL_GROUP, backend)].stats()
                headlines.append(
                    Headline(
                        label=f"{prefix}, {backend}: murmur run_group per item",
                        value=stats.median,
                        unit="us",
                        spread=f"{stats.min:.1f}-{stats.max:.1f}",
                    )
                )
            for calibrated in (False, True):
                stats = cell.achieved(IMPL_GROUP, backend, calibrated=calibrated)
                if stats is None:
                    continue
                ideal = "timer-calibrated ideal" if calibrated else "ideal time"
                headlines.append(
                    Headline(
                        label=f"{prefix}, {backend}: murmur run_group achieved ÷ {ideal}",
                        value=stats.median,
                        unit="%",
                        spread=f"{stats.min:.1f}-{stats.max:.1f}",
                    )
                )
    return headlines


def run(config: RunConfig) -> ScenarioResult:
    started = time.perf_counter()
    backends = available_backends(config.backends)
    chosen = tuple(b for b in backends if b in ("asyncio", "trio"))
    reps = config.pick_reps(30, 5)
    cells = []
    for variant in ("noop", "io"):
        cell = measure(variant, ITEMS, chosen, reps)
        config.log(f"    {variant} {ITEMS:,} items cap={CAP}: {reps} reps, {cell.seconds:.1f}s")
        cells.append(cell)
    notes = [
        "Graph: `fan_out` returns `Plan(items=FanOut[list[Item]])` with 1,000 items → "
        f"`process` (one task per item, `Edge(max_concurrency={CAP})`) → `reduce` (receives "
        "the list, sums it; terminal). The runtime is `AgentRuntime()` with its defaults. The "
        "baselines call the same three functions: `fan_out`, then `process` per item under "
        "an AnyIO task group + `CapacityLimiter(100)` (or `asyncio.gather` + "
        "`Semaphore(100)`), then `reduce`. 'murmur gather by hand' does the fan-out with "
        "`runtime.gather(process, [TaskSpec(input=item) ...], max_concurrency=100)` and the "
        "fan-in by hand: the group's cost minus its graph scheduler. Every run's output (the "
        "sum) is checked.",
        "Per-item cost = wall time of the whole group ÷ 1,000 (building the 1,000 items "
        "in `fan_out` is in both).",
        f"I/O variant: `process` awaits `anyio.sleep({IO_SLEEP_S})`; ideal = ceil(1000 / "
        f"{CAP}) x 1 ms = 10 ms. 1 ms timers overshoot noticeably, so the timer-calibrated "
        "ideal uses the measured duration of one sleep on that backend (50 in sequence, "
        "before and after the cell).",
    ]
    if config.quick:
        notes.append("Quick mode: 5 repetitions per implementation (full run: 30).")
    table = Table(
        "Group fan-out/fan-in of 1,000 items (median [min-max] over repetitions); ratios are "
        "paired medians (min-max)",
        COLUMNS,
        [row for cell in cells for row in _rows(cell)],
    )
    return ScenarioResult(
        name=NAME,
        title="Groups",
        headlines=summarise(cells),
        tables=[table],
        notes=notes,
        data={"cells": [cell.to_json() for cell in cells]},
        seconds=time.perf_counter() - started,
    )


_SHORT = {
    IMPL_GROUP: "run_group",
    IMPL_MURMUR_GATHER: "murmur\ngather",
    IMPL_ANYIO: "anyio\nTaskGroup",
    IMPL_GATHER: "gather\n+Sem",
}
_COLORS = {IMPL_GROUP: "tab:blue", IMPL_MURMUR_GATHER: "tab:cyan"}


def plot(result: ScenarioResult, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells: list[dict[str, Any]] = result.data.get("cells", [])
    if not cells:
        return []
    fig, axes = plt.subplots(1, len(cells), figsize=(5.4 * len(cells), 3.6))
    axes_list = list(axes) if len(cells) > 1 else [axes]
    for ax, cell in zip(axes_list, cells, strict=True):
        labels = draw_bars(
            ax,
            cell["results"],
            "per_task_us",
            _SHORT,
            lambda impl: _COLORS.get(impl, "tab:gray"),
        )
        if cell.get("ideal_s"):
            ideal_us = cell["ideal_s"] / cell["items"] * 1e6
            ax.axhline(ideal_us, color="red", linestyle="--", linewidth=1, label="ideal")
            ax.legend(fontsize=7)
        what = "no-op process" if cell["variant"] == "noop" else "process sleeps 1 ms"
        ax.set_title(f"{cell['items']:,} items, cap {cell['cap']}, {what}", fontsize=9)
        ax.set_xticks(range(len(labels)), labels, fontsize=6)
        ax.set_ylabel("µs per item (median)")
        ax.grid(axis="y", alpha=0.3)
    return [save_figure(fig, out_dir / "groups.png")]


register(
    Scenario(
        name=NAME,
        title="Groups",
        description=(
            "A 3-node agent group: a function agent returns a FanOut of 1,000 items, one task "
            "per item at cap 100 (no-op, or a 1 ms sleep), then a reducer; per-item cost and "
            "achieved vs ideal time against the same fan-out/fan-in written by hand (AnyIO "
            "task group + CapacityLimiter, asyncio.gather + Semaphore), on asyncio and Trio."
        ),
        run=run,
        plot=plot,
        order=60,
    )
)
