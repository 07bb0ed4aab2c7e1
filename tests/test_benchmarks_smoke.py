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
    implemented = [
        "overhead",
        "fidelity",
        "scaling",
        "peers",
        "policies",
        "rate_limits",
        "groups",
        "imports",
        "distributed",
    ]
    assert names == implemented
    for scenario in registry.scenarios():
        assert scenario.implemented == (scenario.name in implemented)


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


def test_policies_cell_reports_paired_ratios_to_the_bare_runtime() -> None:
    import structlog

    policies = _bench("scenarios.policies")
    wanted = {
        policies.BASELINE,
        policies.ALL_POLICIES,
        policies.LOG_FILTERED,
        policies.NOOP_EMITTER,
        "SSEEventEmitter, no clients",
        policies.SEED_STEP_5,
        policies.EMIT_FLOOR,
    }
    chosen = [v for v in policies.VARIANTS if v.name in wanted]
    before = structlog.get_config()
    cell = policies.measure("noop", 50, ("asyncio",), 2, chosen, warm_n=0)
    assert structlog.get_config() == before  # the filtered-logging variant restored it
    data = json.loads(json.dumps(cell.to_json()))
    assert (data["workload"], data["n"], data["cap"], data["reps"]) == ("noop", 50, 100, 2)
    rows = {row["impl"]: row for row in data["results"]}
    assert set(rows) == wanted
    for name, row in rows.items():
        _check_stats(row["per_task_us"], 2)
        if name == policies.BASELINE:
            assert "ratio_vs_baseline" not in row
        else:
            _check_stats(row["ratio_vs_baseline"], 2)
            assert isinstance(row["added_us_per_task"], float)
    assert rows[policies.ALL_POLICIES]["target"] == policies.ALL_POLICIES_TARGET
    headlines = policies.summarise([cell])
    verdicts = {name: h.verdict() for h in headlines for name in wanted if f": {name} ÷" in h.label}
    # The variants with targets get a verdict; the floor and the seed's step 5 are reported.
    assert set(verdicts) == wanted - {policies.BASELINE, "SSEEventEmitter, no clients"}
    assert verdicts[policies.EMIT_FLOOR] == verdicts[policies.SEED_STEP_5] == "info"
    assert {verdicts[name] for name in verdicts if name not in policies.SUMMARY_INFO} <= {
        "PASS",
        "MISS",
    }
    table_rows = policies._rows(cell)
    assert len(table_rows) == len(chosen)
    assert all(len(row) == len(policies.COLUMNS) for row in table_rows)


def test_policies_yield_once_cell_runs_the_agent_under_the_timeout_scope() -> None:
    policies = _bench("scenarios.policies")
    workloads = _bench("workloads")
    chosen = [v for v in policies.VARIANTS if v.name in (policies.BASELINE, "timeout 60 s")]
    cell = policies.measure("yield", 30, ("asyncio", "trio"), 1, chosen, warm_n=0)
    rows = {(row["impl"], row["backend"]) for row in cell.to_json()["results"]}
    assert rows == {(v.name, b) for v in chosen for b in ("asyncio", "trio")}
    agent = workloads.get_workload("yield").agent
    from murmur._agents import may_suspend

    assert may_suspend(agent)  # so the timeout row really measures a scope
    assert not may_suspend(workloads.get_workload("noop").agent)


def test_groups_cell_reports_per_item_cost_and_achieved_vs_ideal() -> None:
    groups = _bench("scenarios.groups")
    noop = groups.measure("noop", 100, ("asyncio",), 1)
    data = json.loads(json.dumps(noop.to_json()))
    assert (data["variant"], data["items"], data["cap"]) == ("noop", 100, 100)
    assert data["ideal_s"] is None
    rows = {row["impl"]: row for row in data["results"]}
    assert set(rows) == set(groups.IMPLS)
    _check_stats(rows[groups.IMPL_GROUP]["per_task_us"], 1)
    _check_stats(rows[groups.IMPL_GROUP][f"ratio_vs_{groups.IMPL_ANYIO}"], 1)
    _check_stats(rows[groups.IMPL_GROUP][f"ratio_vs_{groups.IMPL_MURMUR_GATHER}"], 1)
    assert rows[groups.IMPL_ANYIO][f"ratio_vs_{groups.IMPL_ANYIO}"] is None

    io = groups.measure("io", 100, ("asyncio",), 1)
    data = io.to_json()
    assert data["ideal_s"] == pytest.approx(0.001)  # ceil(100 / 100) waves of 1 ms
    assert _positive(data["sleep_latency_s"]["asyncio"])
    for row in data["results"]:
        _check_stats(row["achieved_pct"], 1)
        _check_stats(row["calibrated_achieved_pct"], 1)
    table_rows = groups._rows(noop) + groups._rows(io)
    assert all(len(row) == len(groups.COLUMNS) for row in table_rows)
    assert any(h.unit == "%" for h in groups.summarise([noop, io]))


def test_imports_probes_run_in_fresh_processes_and_report_wall_and_import_times() -> None:
    imports = _bench("scenarios.imports")
    wanted = ("import anyio", "import murmur", "murmur --help")
    chosen = [p for p in imports.PROBES if p.name in wanted]
    samples = imports.measure(chosen, 1)
    rows = {row["impl"]: row for row in json.loads(json.dumps([s.to_json() for s in samples]))}
    assert set(rows) == set(wanted)
    for name, row in rows.items():
        assert len(row["wall_s"]) == 1
        _check_stats(row["wall_ms"], 1)
        assert ("import_ms" in row) == name.startswith("import")
    _check_stats(rows["import murmur"]["import_ms"], 1)
    assert rows["import murmur"]["target_s"] == imports.IMPORT_TARGET_S
    assert rows["murmur --help"]["target_s"] == imports.HELP_TARGET_S
    table_rows = imports._rows(samples)
    assert all(len(row) == len(imports.COLUMNS) for row in table_rows)
    verdicts = {h.label: h.verdict() for h in imports.summarise(samples)}
    assert len(verdicts) == 3
    assert {v for label, v in verdicts.items() if "anyio" not in label} <= {"PASS", "MISS"}


def test_distributed_rows_on_memory_and_redis_and_nothing_left_on_the_broker() -> None:
    import asyncio
    import uuid

    import redis

    distributed = _bench("scenarios.distributed")
    plan = distributed.Plan(n=40, latency_n=5, reps=1, fm_n=20, batch_timeout=30)
    prefix = f"bench-smoke-{uuid.uuid4().hex[:8]}"
    rows, fm = asyncio.run(distributed.measure(["memory", "redis"], plan, lambda _: None, prefix))
    assert [(r.system, r.broker, r.workers) for r in rows] == [
        (distributed.MURMUR, "memory", 1),
        (distributed.MURMUR, "memory", 2),
        (distributed.MURMUR, "redis", 1),
        (distributed.MURMUR, "redis", 2),
        (distributed.FS_ONE, "redis", 1),
        (distributed.FS_BATCH, "redis", 1),
    ]
    for row in rows:
        assert row.error is None
        assert len(row.tps) == 1
        assert _positive(row.tps[0])
        assert len(row.latency_ms) == 5
        assert all(_positive(v) for v in row.latency_ms)
        assert row.cpu_us["caller"][0] is not None
    assert rows[2].cpu_us["workers"][0] is not None  # read from /proc/<worker pid>/stat
    assert fm is not None
    assert fm["n"] == 20
    assert set(fm["tasks_per_s"]) == {
        "in-process",
        "one Redis worker",
    }
    json.dumps([r.to_json() for r in rows])  # JSON-serialisable
    table = distributed.rows_table(rows)
    assert len(table.rows) == len(rows)
    assert all(len(r) == len(table.columns) for r in table.rows)
    labels = [h.label for h in distributed.headlines(rows, fm)]
    assert any("Redis Streams, 1 worker: tasks/s" in label for label in labels)
    assert any("FunctionModel" in label for label in labels)
    client = redis.Redis.from_url("redis://127.0.0.1:6379")
    try:
        assert list(client.scan_iter(match=f"{prefix}*")) == []
    finally:
        client.close()


def test_rate_limits_cells_run_and_count_round_trips() -> None:
    """A tiny overhead cell in-process and in Redis (round trips counted per call), and
    the achieved-rpm arithmetic on made-up starts."""
    rate_limits = _bench("scenarios.rate_limits")
    local = rate_limits.measure_overhead(None, 50, ("asyncio",), 1)
    stored = rate_limits.measure_overhead("redis://127.0.0.1:6379", 20, ("asyncio", "trio"), 1)
    for cell in (local, stored):
        data = json.loads(json.dumps(cell.to_json()))
        variants = {row["impl"] for row in data["results"]}
        assert variants == {rate_limits.BARE, rate_limits.ONE, rate_limits.TWO}
    assert set(stored.round_trips) == {
        (variant, backend)
        for variant in (rate_limits.ONE, rate_limits.TWO)
        for backend in ("asyncio", "trio")
    }
    # One script call admits a call under every limit in one Redis (corrections ride along).
    assert all(trips == [1.0] for trips in stored.round_trips.values())
    pace = rate_limits.Pace(runtimes=1, rpm=4, period=1.0, periods=2)
    pace.starts = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert (pace.achieved, pace.most_in_a_period, pace.passed) == (2.0, 2, False)
    pace.starts = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert (pace.achieved, pace.most_in_a_period, pace.passed) == (4.0, 4, True)
    pace.starts = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert (pace.achieved, pace.most_in_a_period, pace.passed) == (5.0, 5, False)
    rows = rate_limits._overhead_rows([local, stored])
    assert len(rows) == 3 + 6
    labels = [h.label for h in rate_limits.summarise([local, stored], [pace])]
    assert any("round trips per call" in label for label in labels)
    assert any("achieved" in label for label in labels)


def test_rate_limit_library_rows_are_shaped() -> None:
    """The libraries' table: a measured row, a skipped one (no virtualenv), and the
    sharing arithmetic on made-up admissions."""
    rate_limits = _bench("scenarios.rate_limits")
    assert [spec.dist for spec in rate_limits.LIMITER_PEERS] == [
        "limits",
        "pyrate-limiter",
        "redis-rate-limiters",
    ]
    share = rate_limits.Share([0.0, 0.5, 1.0, 1.5, 2.0, 2.5], 0.0, 4, 1.0, 3)
    assert share.to_json() == {
        "admissions": 6,
        "achieved_per_period": 2.0,
        "most_in_any_period": 2,
    }
    measured = {
        "dist": "limits",
        "version": "5.8.0",
        "local_cpu_us": 2.5,
        "redis_cpu_us": 60.0,
        "redis_trips": 1.0,
        "two_trips": None,
        "facts": {"weights": "yes", "correction": "no", "waiting": "none"},
        "order": {"admitted": [0, 2, 1], "trips_per_admission": 24.5},
        "share": share.to_json(),
    }
    skipped = {"dist": "pyrate-limiter", "version": "4.5.1", "skipped": "no venv"}
    rows = rate_limits._peer_rows([measured, skipped])
    assert rows[0][:5] == ["limits 5.8.0", "2.5", "60.0", "1.00", "not expressible"]
    assert rows[0][-2] == "1 out of order, 24.50 trips per admission"
    assert rows[0][-1] == "2 most in any period, 2 per period"
    assert rows[1][:2] == ["pyrate-limiter 4.5.1", "skipped: no venv"]
    assert len(rows[0]) == len(rows[1]) == 10


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
