"""A cell: one workload x N x cap, every implementation on every backend, interleaved."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .harness import Contender, Samples, Stats, interleave, paired_ratio
from .workloads import (
    BASELINE_FOR,
    IMPL_ASYNCIO_GATHER,
    IMPL_MURMUR,
    compatible,
    contender,
    get_workload,
    make_inputs,
    make_specs,
)

__all__ = ["CellPlan", "CellResult", "run_cell", "warm_up"]

Key = tuple[str, str]


@dataclass(frozen=True)
class CellPlan:
    """What to measure: which implementations, on which backends, how many repetitions."""

    workload: str
    n: int
    cap: int
    backends: tuple[str, ...]
    impls: tuple[str, ...]
    reps: int
    #: (implementation, backend) pairs left out (e.g. slow baselines at large N).
    exclude: frozenset[tuple[str, str]] = frozenset()

    def label(self) -> str:
        return f"{self.workload} N={self.n:,} cap={self.cap}"


@dataclass
class CellResult:
    """The samples of one cell, and the paired ratios derived from them."""

    plan: CellPlan
    samples: dict[Key, Samples]
    seconds: float

    def get(self, impl: str, backend: str) -> Samples | None:
        return self.samples.get((impl, backend))

    def baseline_key(self, backend: str) -> Key | None:
        """The raw baseline a backend's candidates are compared with.

        The natural one for the backend (``asyncio.gather`` + ``Semaphore`` on asyncio and
        uvloop, a Trio nursery + ``CapacityLimiter`` on Trio); when that cannot run the
        workload (pydantic-ai under Trio), ``asyncio.gather`` + ``Semaphore`` on asyncio.
        """
        native = (BASELINE_FOR[backend], backend)
        if native in self.samples:
            return native
        reference = (IMPL_ASYNCIO_GATHER, "asyncio")
        return reference if reference in self.samples else None

    def reference_key(self) -> Key | None:
        """``asyncio.gather`` + ``Semaphore`` on asyncio: the headline's baseline."""
        key = (IMPL_ASYNCIO_GATHER, "asyncio")
        return key if key in self.samples else None

    def ratio(self, candidate: Key, baseline: Key | None, *, cpu: bool = False) -> Stats | None:
        """Paired ratio of wall-clock (or, with ``cpu``, process CPU) time per task."""
        if baseline is None or candidate not in self.samples or baseline not in self.samples:
            return None
        mine, theirs = self.samples[candidate], self.samples[baseline]
        if cpu:
            return paired_ratio(mine.cpu_per_task_us, theirs.cpu_per_task_us)
        return paired_ratio(mine.per_task_us, theirs.per_task_us)

    def to_json(self) -> dict[str, Any]:
        rows = []
        reference = self.reference_key()
        for key, samples in self.samples.items():
            row = samples.to_json()
            base = self.baseline_key(key[1])
            vs_base = self.ratio(key, base) if base != key else None
            vs_ref = self.ratio(key, reference) if reference != key else None
            row["baseline"] = None if base is None else {"impl": base[0], "backend": base[1]}
            row["ratio_vs_baseline"] = None if vs_base is None else vs_base.to_json()
            cpu_base = self.ratio(key, base, cpu=True) if base != key else None
            row["cpu_ratio_vs_baseline"] = None if cpu_base is None else cpu_base.to_json()
            row["best_ratio_vs_baseline"] = (
                None
                if base is None or base == key or base not in self.samples
                else samples.stats().min / self.samples[base].stats().min
            )
            row["ratio_vs_asyncio_gather"] = None if vs_ref is None else vs_ref.to_json()
            rows.append(row)
        return {
            "workload": self.plan.workload,
            "n": self.plan.n,
            "cap": self.plan.cap,
            "reps": self.plan.reps,
            "seconds": round(self.seconds, 2),
            "results": rows,
        }


def _contenders(plan: CellPlan, inputs: Sequence[str], with_specs: bool) -> list[Contender]:
    workload = get_workload(plan.workload)
    specs = make_specs(inputs) if with_specs else None
    return [
        contender(impl, backend, workload, inputs, plan.cap, specs)
        for backend in plan.backends
        for impl in plan.impls
        if compatible(impl, backend, workload) and (impl, backend) not in plan.exclude
    ]


def run_cell(plan: CellPlan, log: Callable[[str], None] | None = None) -> CellResult:
    """Measure one cell: every compatible (implementation, backend), interleaved."""
    started = time.perf_counter()
    inputs = make_inputs(plan.n)
    contenders = _contenders(plan, inputs, IMPL_MURMUR in plan.impls)
    samples = interleave(contenders, plan.n, plan.reps)
    seconds = time.perf_counter() - started
    if log is not None:
        log(
            f"    {plan.label()}: {len(contenders)} implementations x {plan.reps} reps, "
            f"{seconds:.1f}s"
        )
    return CellResult(plan, samples, seconds)


def warm_up(plans: Iterable[CellPlan], n: int = 50) -> None:
    """Run every (workload, implementation, backend) of ``plans`` once on a small batch.

    First calls pay for imports, lazily built pydantic-ai internals and validators; none
    of that belongs in the first measured repetition.
    """
    seen: set[tuple[str, tuple[str, ...], tuple[str, ...], frozenset[tuple[str, str]]]] = set()
    for plan in plans:
        key = (plan.workload, plan.backends, plan.impls, plan.exclude)
        if key in seen:
            continue
        seen.add(key)
        small = CellPlan(
            plan.workload, n, min(plan.cap, n), plan.backends, plan.impls, 1, plan.exclude
        )
        for item in _contenders(small, make_inputs(n), IMPL_MURMUR in small.impls):
            item.run()
