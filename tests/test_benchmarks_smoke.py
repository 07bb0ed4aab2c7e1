"""Smoke test of the benchmark suite's code (benchmarks/): it runs, and its results are shaped.

Never asserts a speed: timings on a shared machine are noise at this size. It runs one tiny
cell of each measuring path in-process and checks the structure of what comes back.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(module: str) -> ModuleType:
    """Import ``benchmarks.<module>`` (the suite lives at the repository root)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"benchmarks.{module}")


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _check_stats(stats: dict[str, Any], n: int) -> None:
    assert set(stats) == {"median", "min", "max", "q1", "q3", "n"}
    assert stats["n"] == n
    assert all(_positive(stats[k]) for k in ("median", "min", "max", "q1", "q3"))
    assert stats["min"] <= stats["median"] <= stats["max"]


def test_registry_lists_implemented_and_planned_scenarios() -> None:
    _bench("scenarios")
    registry = _bench("registry")
    names = [s.name for s in registry.scenarios()]
    assert names[:4] == ["overhead", "fidelity", "scaling", "peers"]
    assert {"policies", "groups", "distributed"} <= set(names)
    for scenario in registry.scenarios():
        assert scenario.implemented == (scenario.name in names[:4])


def test_overhead_cell_runs_and_reports_per_task_costs() -> None:
    cells = _bench("cells")
    workloads = _bench("workloads")
    overhead = _bench("scenarios.overhead")
    plan = cells.CellPlan(
        "noop",
        200,
        20,
        ("asyncio",),
        (workloads.IMPL_MURMUR, workloads.IMPL_MURMUR_SPEC, workloads.IMPL_ASYNCIO_GATHER),
        2,
    )
    result = cells.run_cell(plan)
    data = json.loads(json.dumps(result.to_json()))  # JSON-serialisable
    assert (data["workload"], data["n"], data["cap"], data["reps"]) == ("noop", 200, 20, 2)
    rows = {row["impl"]: row for row in data["results"]}
    assert set(rows) == {
        workloads.IMPL_MURMUR,
        workloads.IMPL_MURMUR_SPEC,
        workloads.IMPL_ASYNCIO_GATHER,
    }
    for row in rows.values():
        assert row["backend"] == "asyncio"
        assert len(row["wall_s"]) == 2
        assert all(_positive(w) for w in row["wall_s"])
        _check_stats(row["per_task_us"], 2)
    murmur = rows[workloads.IMPL_MURMUR]
    assert murmur["baseline"] == {"impl": workloads.IMPL_ASYNCIO_GATHER, "backend": "asyncio"}
    _check_stats(murmur["ratio_vs_baseline"], 2)
    assert rows[workloads.IMPL_ASYNCIO_GATHER]["ratio_vs_baseline"] is None
    table_rows = overhead.cell_rows(result)
    assert len(table_rows) == 1
    assert len(table_rows[0]) == len(overhead.COLUMNS)


def test_fidelity_cell_reports_throughput_and_peak_in_flight() -> None:
    fidelity = _bench("scenarios.fidelity")
    workloads = _bench("workloads")
    cell = fidelity.measure(
        "io-sleep", 100, 20, ("asyncio",), (workloads.IMPL_MURMUR,), 1, calibrate=True
    )
    data = cell.to_json()
    assert data["ideal_s"] == pytest.approx(0.05)
    (row,) = data["results"]
    assert 0 < row["peak_in_flight"] <= 20  # the cap holds: never more in flight
    _check_stats(row["fidelity_pct"], 1)
    _check_stats(row["calibrated_fidelity_pct"], 1)
    assert _positive(data["sleep_latency_s"]["asyncio"])


def test_report_renders_a_scenario_result(tmp_path: Path) -> None:
    registry = _bench("registry")
    report = _bench("report")
    harness = _bench("harness")
    result = registry.ScenarioResult(
        name="demo",
        title="Demo",
        headlines=[registry.Headline("a ratio", 1.5, "x", "1.2-1.8", "≤ 2.00x", True)],
        tables=[registry.Table("t", ["a", "b"], [["1", "2|3"]])],
        notes=["a note"],
    )
    meta = harness.environment()
    meta.update(mode="test", started="now", loadavg_start=None)
    json_path, md_path = report.write(tmp_path, meta, [result], [])
    assert json.loads(json_path.read_text())["scenarios"]["demo"]["headlines"][0]["verdict"] == (
        "PASS"
    )
    text = md_path.read_text()
    assert "| a ratio | 1.50x | 1.2-1.8 | ≤ 2.00x | PASS |" in text
    assert "2\\|3" in text
