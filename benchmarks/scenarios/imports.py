"""Scenario "imports": what ``import murmur`` and ``murmur --help`` cost a fresh process.

Each command runs in a new interpreter, as a user's program or shell would start it; the
commands take turns (the order rotates every repetition) after one untimed warm-up each,
and the medians are reported beside ``import anyio`` (what Murmur is built on) and the
bare interpreter. ``import pydantic_ai`` is measured too: it is what ``import murmur`` no
longer pays, until a pydantic-ai agent is built or run.

Two figures per import: the process's wall time (start-up included: what a user waits for)
and, measured inside the child, the import statement alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import murmur

from ..harness import Stats, draw_bars, save_figure
from ..registry import Headline, RunConfig, Scenario, ScenarioResult, Table, register

__all__ = ["HELP_TARGET_S", "IMPORT_TARGET_S", "PROBES", "Probe", "measure", "probes", "run"]

NAME = "imports"
#: The issue's targets, for a fresh process on the benchmark machine.
IMPORT_TARGET_S = 0.3
HELP_TARGET_S = 0.5

#: Child code for an import probe: time the import alone, and say what it loaded.
_IMPORT_CODE = (
    "import json, sys, time\n"
    "started = time.perf_counter()\n"
    "import {module}\n"
    "took = time.perf_counter() - started\n"
    "print(json.dumps({{'import_s': took, 'pydantic_ai': 'pydantic_ai' in sys.modules}}))\n"
)


@dataclass(frozen=True)
class Probe:
    """One command, run in a fresh interpreter."""

    name: str
    argv: tuple[str, ...]
    target_s: float | None = None
    #: For an import probe: the module whose import the child times.
    module: str | None = None


@dataclass
class ProbeSamples:
    """Every timed run of one probe."""

    probe: Probe
    wall_s: list[float] = field(default_factory=list)
    import_s: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        wall_ms = Stats.of([w * 1e3 for w in self.wall_s])
        row: dict[str, Any] = {
            "impl": self.probe.name,
            "backend": "fresh process",
            "argv": list(self.probe.argv),
            "wall_s": [round(w, 6) for w in self.wall_s],
            "wall_ms": wall_ms.to_json(),
            "target_s": self.probe.target_s,
        }
        if self.import_s:
            row["import_s"] = [round(s, 6) for s in self.import_s]
            row["import_ms"] = Stats.of([s * 1e3 for s in self.import_s]).to_json()
        return row


def _murmur_command() -> tuple[str, ...]:
    """The ``murmur`` console script beside this interpreter, as a user runs it, else
    ``python -m murmur``."""
    script = Path(sys.executable).with_name("murmur")
    if script.exists():
        return (str(script),)
    return (sys.executable, "-m", "murmur")


def probes() -> tuple[Probe, ...]:
    """The commands measured, baselines first."""
    python = sys.executable

    def importing(module: str, target: float | None = None) -> Probe:
        code = _IMPORT_CODE.format(module=module)
        return Probe(f"import {module}", (python, "-c", code), target, module)

    return (
        Probe("python -c pass", (python, "-c", "pass")),
        importing("anyio"),
        importing("murmur", IMPORT_TARGET_S),
        Probe("murmur --help", (*_murmur_command(), "--help"), HELP_TARGET_S),
        importing("pydantic_ai"),
    )


PROBES = probes()


def _child_env(pycache: Path) -> dict[str, str]:
    """The parent's environment, with the measured murmur (this process's) first on the path
    and bytecode cached under ``pycache``.

    An installed package runs from cached bytecode, so the children must too, even where
    ``PYTHONDONTWRITEBYTECODE`` is set (compiling murmur's sources on every start would
    add tens of ms): the warm-up run fills a private cache, never the source tree or venv.
    """
    source = str(Path(murmur.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    env = {
        **os.environ,
        "PYTHONPATH": source if not path else os.pathsep.join((source, path)),
        "PYTHONPYCACHEPREFIX": str(pycache),
        "COLUMNS": "100",
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _run_once(probe: Probe, env: dict[str, str]) -> tuple[float, float | None]:
    """Run ``probe`` once: its wall time, and the child's own import time (import probes)."""
    started = time.perf_counter()
    proc = subprocess.run(
        probe.argv, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{probe.name!r} exited {proc.returncode}: {proc.stderr[-2000:]}")
    if probe.module is None:
        if probe.name == "murmur --help" and "Usage" not in proc.stdout:
            raise RuntimeError(f"'murmur --help' printed no usage: {proc.stdout[:500]!r}")
        return wall, None
    report = json.loads(proc.stdout)
    if probe.module == "murmur" and report["pydantic_ai"]:
        raise RuntimeError("import murmur imported pydantic_ai")
    return wall, float(report["import_s"])


def measure(chosen: Sequence[Probe], reps: int) -> list[ProbeSamples]:
    """One untimed warm-up run of each probe, then ``reps`` timed rounds, order rotating."""
    samples = [ProbeSamples(probe) for probe in chosen]
    with tempfile.TemporaryDirectory(prefix="murmur-bench-pycache-") as pycache:
        env = _child_env(Path(pycache))
        for probe in chosen:
            _run_once(probe, env)
        for rep in range(reps):
            shift = rep % len(samples)
            for item in samples[shift:] + samples[:shift]:
                wall, imported = _run_once(item.probe, env)
                item.wall_s.append(wall)
                if imported is not None:
                    item.import_s.append(imported)
    return samples


def _ms(stats: Stats) -> str:
    return f"{stats.median:,.0f} [{stats.min:,.0f}-{stats.max:,.0f}]"


def _rows(samples: Sequence[ProbeSamples]) -> list[list[str]]:
    anyio = next(s for s in samples if s.probe.name == "import anyio")
    anyio_wall = Stats.of(anyio.wall_s).median
    rows = []
    for item in samples:
        wall = Stats.of([w * 1e3 for w in item.wall_s])
        alone = _ms(Stats.of([s * 1e3 for s in item.import_s])) if item.import_s else "-"
        target = item.probe.target_s
        verdict = "-" if target is None else ("PASS" if wall.median <= target * 1e3 else "MISS")
        rows.append(
            [
                f"`{item.probe.name}`",
                _ms(wall),
                alone,
                f"{wall.median / (anyio_wall * 1e3):.1f}x",
                "-" if target is None else f"≤ {target * 1e3:,.0f} ms",
                verdict,
            ]
        )
    return rows


COLUMNS = [
    "command",
    "process wall ms",
    "the import alone, ms",
    "÷ import anyio (wall)",
    "target (wall)",
    "verdict",
]


def summarise(samples: Sequence[ProbeSamples]) -> list[Headline]:
    headlines = []
    for item in samples:
        if item.probe.name not in ("import anyio", "import murmur", "murmur --help"):
            continue
        wall = Stats.of([w * 1e3 for w in item.wall_s])
        target = item.probe.target_s
        headlines.append(
            Headline(
                label=f"imports: `{item.probe.name}`, fresh process, wall time",
                value=wall.median,
                unit="ms",
                spread=f"{wall.min:,.0f}-{wall.max:,.0f}",
                target="" if target is None else f"≤ {target * 1e3:,.0f} ms",
                passed=None if target is None else wall.median <= target * 1e3,
            )
        )
    return headlines


def run(config: RunConfig) -> ScenarioResult:
    started = time.perf_counter()
    reps = config.pick_reps(21, 5)
    samples = measure(PROBES, reps)
    config.log(f"    {len(PROBES)} commands x {reps} reps, {time.perf_counter() - started:.1f}s")
    notes = [
        "Each command runs in a new interpreter (`subprocess.run`, output captured), "
        f"{reps} times, the commands taking turns in a rotating order after one untimed "
        "warm-up each, which also fills a private bytecode cache (`PYTHONPYCACHEPREFIX`; "
        "`PYTHONDONTWRITEBYTECODE` is dropped): the commands run from cached bytecode and "
        "a warm OS file cache, as an installed package does from its second start. "
        "'process wall' is from spawning to exit, interpreter start-up "
        "included; 'the import alone' is `time.perf_counter()` around the import statement "
        "inside the child.",
        "The children import the same murmur as the suite (its source directory is put "
        "first on `PYTHONPATH`). `murmur --help` is the console script beside the "
        "interpreter (else `python -m murmur --help`), with `COLUMNS=100`. Every run is "
        "checked: exit status 0, the help has a usage line, and `import murmur` left "
        "`pydantic_ai` out of `sys.modules`.",
        "`import pydantic_ai` is what `import murmur` no longer pays: a pydantic-ai agent "
        "imports it when it is first built or run.",
    ]
    if config.quick:
        notes.append("Quick mode: 5 repetitions per command (full run: 21).")
    table = Table(
        "Fresh-process start-up cost (median [min-max] over repetitions, in ms)",
        COLUMNS,
        _rows(samples),
    )
    return ScenarioResult(
        name=NAME,
        title="Import time",
        headlines=summarise(samples),
        tables=[table],
        notes=notes,
        data={"reps": reps, "results": [s.to_json() for s in samples]},
        seconds=time.perf_counter() - started,
    )


def plot(result: ScenarioResult, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[dict[str, Any]] = result.data.get("results", [])
    if not rows:
        return []
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    draw_bars(
        ax,
        rows,
        "wall_ms",
        {},
        lambda impl: "tab:blue" if impl in ("import murmur", "murmur --help") else "tab:gray",
    )
    ax.set_xticks(range(len(rows)), [row["impl"].replace(" ", "\n", 1) for row in rows])
    for position, row in enumerate(rows):
        if row.get("target_s"):
            target_ms = row["target_s"] * 1e3
            ax.hlines(target_ms, position - 0.4, position + 0.4, colors="red", linestyles="--")
    ax.set_ylabel("fresh process, wall ms (median, min-max)")
    ax.set_title("Start-up cost; red dashes: targets", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    return [save_figure(fig, out_dir / f"bench-{NAME}.png")]


register(
    Scenario(
        name=NAME,
        title="Import time",
        description=(
            "import anyio, import murmur, murmur --help (and import pydantic_ai) in fresh "
            "processes: wall time and the import alone, against the start-up targets."
        ),
        run=run,
        plot=plot,
        order=65,
    )
)
