"""The scenario registry: what ``python -m benchmarks`` can run.

A scenario is a function ``run(config) -> ScenarioResult`` plus, optionally, a
``plot(result, out_dir) -> list[Path]``. Register it with :func:`register` in a module
under ``benchmarks/scenarios/`` and import that module from
``benchmarks/scenarios/__init__.py``; the CLI, the JSON/markdown report and the plots
pick it up from here. Scenarios that are planned but not written yet are registered
without ``run`` so that ``--list`` and the report show them as such.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "REGISTRY",
    "Headline",
    "RunConfig",
    "Scenario",
    "ScenarioResult",
    "Status",
    "Table",
    "register",
    "scenarios",
]

Status = Literal["ok", "reduced", "skipped", "planned", "error"]


@dataclass(frozen=True)
class RunConfig:
    """How one invocation of the suite runs."""

    quick: bool = False
    #: Override of every scenario's repetition count (None: the scenario's own default).
    reps: int | None = None
    #: Event loops to use, among those installed.
    backends: tuple[str, ...] = ("asyncio", "uvloop", "trio")
    out_dir: Path = Path("benchmarks/results")
    #: Where peer virtualenvs live (one per peer package).
    venvs_dir: Path = Path("benchmarks/.venvs")
    #: May the suite create missing peer virtualenvs? (None: only in full mode.)
    setup_peers: bool | None = None
    log: Callable[[str], None] = print

    def pick_reps(self, full: int, quick: int) -> int:
        if self.reps is not None:
            return max(1, self.reps)
        return quick if self.quick else full


@dataclass
class Headline:
    """One figure that goes in the summary table, usually checked against a target."""

    label: str
    value: float
    unit: Literal["x", "%", "us", "ms", "MB", "/s"]
    spread: str = ""
    target: str = ""
    passed: bool | None = None

    def render_value(self) -> str:
        if self.unit == "x":
            return f"{self.value:.2f}x"
        if self.unit == "%":
            return f"{self.value:.1f}%"
        if self.unit == "us":
            return f"{self.value:.2f} µs"
        if self.unit == "ms":
            return f"{self.value:,.0f} ms" if self.value >= 100 else f"{self.value:.2f} ms"
        if self.unit == "/s":
            return f"{self.value:,.0f} tasks/s"
        return f"{self.value:.1f} MB"

    def verdict(self) -> str:
        if self.passed is None:
            return "info"
        return "PASS" if self.passed else "MISS"


@dataclass
class Table:
    """A markdown table of one scenario."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)


@dataclass
class ScenarioResult:
    """Everything one scenario produced: figures for humans and raw data for the JSON."""

    name: str
    title: str
    status: Status = "ok"
    headlines: list[Headline] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    seconds: float = 0.0


RunFn = Callable[[RunConfig], ScenarioResult]
PlotFn = Callable[[ScenarioResult, Path], list[Path]]


@dataclass(frozen=True)
class Scenario:
    """A registered scenario; ``run is None`` means planned, not implemented yet."""

    name: str
    title: str
    description: str
    run: RunFn | None = None
    plot: PlotFn | None = None
    #: Position in ``--list`` and in the report (lowest first).
    order: int = 100

    @property
    def implemented(self) -> bool:
        return self.run is not None


#: Every known scenario, in report order.
REGISTRY: dict[str, Scenario] = {}


def register(scenario: Scenario) -> Scenario:
    """Add ``scenario`` to the registry (names are unique)."""
    if scenario.name in REGISTRY:
        raise ValueError(f"scenario {scenario.name!r} is already registered")
    REGISTRY[scenario.name] = scenario
    return scenario


def scenarios() -> list[Scenario]:
    """Every registered scenario, in report order."""
    return sorted(REGISTRY.values(), key=lambda s: (s.order, s.name))
