"""Reports: results.json (everything), results.md (the tables) and the PNG plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .registry import Headline, Scenario, ScenarioResult, Table

__all__ = ["TARGETS", "markdown", "render_table", "to_json", "write"]

#: The project's stated targets (docs/benchmarks.md).
TARGETS: dict[str, str] = {
    "function agents": "gather of no-op function agents ≤ 2x raw asyncio.gather + Semaphore",
    "FunctionModel agents": "gather of pydantic-ai FunctionModel agents ≤ 1.15x plain "
    "pydantic-ai under asyncio.gather + Semaphore",
    "cap fidelity": "≥ 95% of ideal throughput with I/O-bound function agents",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(table: Table) -> str:
    """A GitHub-flavoured markdown table."""
    lines = [
        "| " + " | ".join(_cell(c) for c in table.columns) + " |",
        "|" + "|".join("---" for _ in table.columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _summary(results: Sequence[ScenarioResult]) -> Table:
    table = Table("Summary", ["figure", "value", "spread (min-max)", "target", "verdict"])
    for result in results:
        for h in result.headlines:
            table.rows.append(
                [h.label, h.render_value(), h.spread or "-", h.target or "-", h.verdict()]
            )
    return table


def _status_table(results: Sequence[ScenarioResult], planned: Sequence[Scenario]) -> Table:
    table = Table("Scenarios", ["scenario", "status", "seconds"])
    for result in results:
        table.rows.append(
            [f"{result.title} (`{result.name}`)", result.status, f"{result.seconds:.0f}"]
        )
    for scenario in planned:
        table.rows.append(
            [f"{scenario.title} (`{scenario.name}`)", "planned — not implemented yet", "-"]
        )
    return table


def markdown(
    meta: dict[str, Any],
    results: Sequence[ScenarioResult],
    planned: Sequence[Scenario],
    *,
    images: bool = True,
    heading_level: int = 1,
) -> str:
    """The report as markdown (``images=False``: without plot links, for the terminal)."""
    h = "#" * heading_level
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    out = [
        f"{h} Murmur benchmarks: {meta['mode']} run, {meta['started']}",
        "",
        f"{meta['platform']}, {meta['cpu_count']} CPUs, Python {meta['python']}; murmur "
        f"{meta['murmur']} (git {meta['git_head']}, src {meta['src_fingerprint']}); {versions}. "
        f"Load average at start {meta['loadavg_start']}, at end {meta.get('loadavg_end')}; "
        f"total {meta.get('total_seconds', 0):.0f} s.",
        "",
        "Ratios are medians of per-repetition ratios against a baseline measured in the same "
        "process, interleaved with the candidate; spreads are min-max over repetitions.",
        "",
        f"{h}# Summary",
        "",
        render_table(_summary(results)),
        "",
        render_table(_status_table(results, planned)),
    ]
    for result in results:
        out += ["", f"{h}# {result.title}", ""]
        for table in result.tables:
            out += [f"*{table.title}*", "", render_table(table), ""]
        out += [f"- {note}" for note in result.notes]
        if images:
            out += ["", *(f"![{result.name}]({name})" for name in result.plots)]
    return "\n".join(out).rstrip() + "\n"


def _headline_json(h: Headline) -> dict[str, Any]:
    data = asdict(h)
    data["verdict"] = h.verdict()
    return data


def to_json(
    meta: dict[str, Any], results: Sequence[ScenarioResult], planned: Sequence[Scenario]
) -> dict[str, Any]:
    return {
        "meta": meta,
        "targets": TARGETS,
        "scenarios": {
            r.name: {
                "title": r.title,
                "status": r.status,
                "seconds": round(r.seconds, 2),
                "headlines": [_headline_json(h) for h in r.headlines],
                "tables": [asdict(t) for t in r.tables],
                "notes": r.notes,
                "plots": r.plots,
                "data": r.data,
            }
            for r in results
        },
        "planned": [
            {"name": s.name, "title": s.title, "description": s.description} for s in planned
        ],
    }


def write(
    out_dir: Path,
    meta: dict[str, Any],
    results: Sequence[ScenarioResult],
    planned: Sequence[Scenario],
) -> tuple[Path, Path]:
    """Write results.json and results.md into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    md_path = out_dir / "results.md"
    json_path.write_text(json.dumps(to_json(meta, results, planned), indent=1, default=str) + "\n")
    md_path.write_text(markdown(meta, results, planned))
    return json_path, md_path
