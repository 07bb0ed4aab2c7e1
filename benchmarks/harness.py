"""Measurement machinery shared by every scenario.

The machine the benchmarks run on is shared and noisy, so nothing here trusts an absolute
number on its own:

* every scenario measures its baselines in the same process, in the same run, with the
  repetitions of baseline and candidates interleaved (the order rotates every repetition);
* each implementation runs in a fresh event loop per repetition, and only the awaited call
  is timed (loop start-up and input preparation are outside the clock);
* results are medians over repetitions, with the spread (min/max and the IQR) kept;
* ratios are *paired*: repetition ``i`` of a candidate is divided by repetition ``i`` of its
  baseline (measured moments apart), and the median of those ratios is reported.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "BACKENDS",
    "Contender",
    "Samples",
    "Stats",
    "Timing",
    "available_backends",
    "environment",
    "fmt_ratio",
    "fmt_spread",
    "fmt_us",
    "interleave",
    "loadavg",
    "paired_ratio",
    "quiet_logging",
    "run_on",
    "save_figure",
    "timed",
]

T = TypeVar("T")

#: Event loops the in-process scenarios know how to drive.
BACKENDS: tuple[str, ...] = ("asyncio", "uvloop", "trio")

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Timing:
    """One timed run: wall-clock seconds and process CPU seconds of the timed region."""

    wall_s: float
    cpu_s: float


@dataclass(frozen=True)
class Stats:
    """Summary of one series of samples."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        if not values:
            raise ValueError("no samples")
        ordered = sorted(values)
        if len(ordered) >= 2:
            q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q1 = q3 = ordered[0]
        return cls(
            median=statistics.median(ordered),
            min=ordered[0],
            max=ordered[-1],
            q1=q1,
            q3=q3,
            n=len(ordered),
        )

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass
class Samples:
    """Every repetition of one implementation in one cell of a scenario."""

    impl: str
    backend: str
    n_tasks: int
    timings: list[Timing] = field(default_factory=list)

    @property
    def per_task_us(self) -> list[float]:
        """Wall-clock cost per task, in microseconds, one value per repetition."""
        return [t.wall_s / self.n_tasks * 1e6 for t in self.timings]

    @property
    def cpu_per_task_us(self) -> list[float]:
        return [t.cpu_s / self.n_tasks * 1e6 for t in self.timings]

    @property
    def wall(self) -> list[float]:
        return [t.wall_s for t in self.timings]

    def stats(self) -> Stats:
        return Stats.of(self.per_task_us)

    def to_json(self) -> dict[str, Any]:
        return {
            "impl": self.impl,
            "backend": self.backend,
            "n_tasks": self.n_tasks,
            "wall_s": [round(t.wall_s, 6) for t in self.timings],
            "cpu_s": [round(t.cpu_s, 6) for t in self.timings],
            "per_task_us": self.stats().to_json(),
            "cpu_per_task_us": Stats.of(self.cpu_per_task_us).to_json(),
        }


@dataclass(frozen=True)
class Contender:
    """One implementation to time in a cell: ``run()`` does one whole repetition."""

    impl: str
    backend: str
    run: Callable[[], Timing]

    @property
    def key(self) -> tuple[str, str]:
        return (self.impl, self.backend)


def interleave(
    contenders: Sequence[Contender],
    n_tasks: int,
    reps: int,
    *,
    warmup: bool = False,
) -> dict[tuple[str, str], Samples]:
    """Run every contender ``reps`` times, interleaved; rotate the order each repetition."""
    if warmup:
        for contender in contenders:
            contender.run()
    samples = {c.key: Samples(c.impl, c.backend, n_tasks) for c in contenders}
    count = len(contenders)
    for rep in range(reps):
        for k in range(count):
            contender = contenders[(rep + k) % count]
            samples[contender.key].timings.append(contender.run())  # collects, then times
    return samples


def paired_ratio(candidate: Sequence[float], baseline: Sequence[float]) -> Stats:
    """Median (and spread) of the per-repetition ratios ``candidate[i] / baseline[i]``."""
    if len(candidate) != len(baseline):
        raise ValueError("paired series must have the same length")
    return Stats.of([c / b for c, b in zip(candidate, baseline, strict=True) if b > 0])


async def timed(call: Callable[[], Awaitable[T]]) -> tuple[Timing, T]:
    """Await ``call()`` and time it (wall and process CPU), after a full collection."""
    gc.collect()
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    value = await call()
    wall1 = time.perf_counter()
    cpu1 = time.process_time()
    return Timing(wall1 - wall0, cpu1 - cpu0), value


def run_on(backend: str, main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` in a fresh event loop of ``backend`` (asyncio, uvloop or trio)."""
    if backend == "asyncio":
        with asyncio.Runner() as runner:
            return runner.run(_as_coroutine(main))
    if backend == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_as_coroutine(main))
    if backend == "trio":
        import trio

        return trio.run(main)
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


async def _as_coroutine(main: Callable[[], Awaitable[T]]) -> T:
    return await main()


def available_backends(requested: Sequence[str] = BACKENDS) -> tuple[str, ...]:
    """The requested backends whose libraries are importable here."""
    found = []
    for backend in requested:
        if backend == "asyncio" or importlib.util.find_spec(backend) is not None:
            found.append(backend)
    return tuple(found)


def quiet_logging() -> None:
    """Send structlog output (the runtime's default event emitter) to /dev/null.

    The runtime keeps its default configuration (same levels, same events built); only
    the rendered lines are discarded, so they cannot flood the terminal or the timings.
    """
    import structlog

    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sink))
    logging.basicConfig(stream=sink, force=True)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _src_fingerprint() -> str | None:
    """A hash of src/murmur's Python files: which working tree was measured."""
    src = REPO_ROOT / "src" / "murmur"
    if not src.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(src.rglob("*.py")):
        digest.update(str(path.relative_to(src)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _git_head() -> str | None:
    """The commit checked out (also in a linked worktree, whose ``.git`` is a file)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment() -> dict[str, Any]:
    """What was measured, where: versions, machine, working-tree fingerprint."""
    import murmur

    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "loadavg": loadavg(),
        "murmur": getattr(murmur, "__version__", None),
        "murmur_file": getattr(murmur, "__file__", None),
        "git_head": _git_head(),
        "src_fingerprint": _src_fingerprint(),
        "versions": {
            dist: _version(dist)
            for dist in ("anyio", "trio", "uvloop", "pydantic", "pydantic-ai-slim", "structlog")
        },
    }


def save_figure(
    fig: Any, path: Path, *, rect: tuple[float, float, float, float] | None = None
) -> Path:
    """Lay out, save and close a matplotlib figure, as a small PNG (palette-quantised when
    Pillow is there); ``rect`` leaves room outside the axes (a legend, say)."""
    import matplotlib.pyplot as plt

    if rect is None:
        fig.tight_layout()
    else:
        fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    try:
        from PIL import Image
    except ImportError:
        return path
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)
    return path


def draw_bars(
    ax: Any,
    rows: Sequence[dict[str, Any]],
    metric: str,
    names: Mapping[str, str],
    color: Callable[[str], str],
) -> list[str]:
    """One bar per result row: the median of its ``metric`` with min-max error bars,
    coloured by ``color(impl)``. Returns the x labels (short implementation name, backend)."""
    labels, values, lo, hi, colors = [], [], [], [], []
    for row in rows:
        stats = row[metric]
        labels.append(f"{names.get(row['impl'], row['impl'])}\n{row['backend']}")
        values.append(stats["median"])
        lo.append(stats["median"] - stats["min"])
        hi.append(stats["max"] - stats["median"])
        colors.append(color(row["impl"]))
    ax.bar(range(len(values)), values, yerr=[lo, hi], capsize=3, color=colors)
    return labels


def fmt_us(value: float) -> str:
    """A per-task cost in µs, with sensible precision."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_ratio(stats: Stats) -> str:
    """``1.23x (1.10-1.40)``: median paired ratio and its min/max."""
    return f"{stats.median:.2f}x ({stats.min:.2f}-{stats.max:.2f})"


def fmt_spread(stats: Stats) -> str:
    """``12.3 [11.9-13.0]``: median and min/max of a per-task cost."""
    return f"{fmt_us(stats.median)} [{fmt_us(stats.min)}-{fmt_us(stats.max)}]"
