"""Reports: results.json (everything), results.md (the tables) and the PNG plots."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .registry import Headline, Scenario, ScenarioResult, Table

__all__ = [
    "DOCS",
    "TARGETS",
    "markdown",
    "render_table",
    "scenario_section",
    "to_json",
    "update_docs",
    "write",
]

#: The page the results go to (``--update-docs``), and where its plots live.
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"

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


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def scenario_section(meta: dict[str, Any], result: ScenarioResult, image_dir: str) -> str:
    """One scenario's results as a section of docs/benchmarks.md: the run, its summary
    figures, its tables and notes, and its plots (under ``image_dir``, as copied)."""
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    command = " ".join(["python -m benchmarks", *meta.get("argv", [])])
    out = [
        f"#### {result.title}: {meta['mode']} run, {meta['started']}",
        "",
        f"`{command}` on {meta['platform']}, {meta['cpu_count']} CPUs, Python "
        f"{meta['python']}; murmur {meta['murmur']} (git {meta['git_head']}, src "
        f"{meta['src_fingerprint']}); {versions}. Load average at start "
        f"{meta['loadavg_start']}, at end {meta.get('loadavg_end')}; the scenario took "
        f"{result.seconds:.0f} s.",
        "",
    ]
    summary = _summary([result])
    if summary.rows:
        out += [render_table(summary), ""]
    for table in result.tables:
        out += [f"*{table.title}*", "", render_table(table), ""]
    out += [f"- {note}" for note in result.notes]
    out += ["", *(f"![{result.name}]({image_dir}/bench-{name})" for name in result.plots)]
    return "\n".join(out).rstrip() + "\n"


def update_docs(
    meta: dict[str, Any],
    results: Sequence[ScenarioResult],
    out_dir: Path,
    docs: Path = DOCS,
) -> list[str]:
    """Replace, in ``docs``, the section between ``<!-- bench:NAME:start -->`` and
    ``<!-- bench:NAME:end -->`` of each result (scenarios without those markers are left
    alone), and copy its plots beside the page (``img/bench-<plot>``). Returns the names
    of the scenarios whose section was replaced."""
    text = docs.read_text()
    done: list[str] = []
    for result in results:
        start, end = _markers(result.name)
        if result.status == "error" or start not in text or end not in text:
            continue
        images = docs.parent / "img"
        images.mkdir(exist_ok=True)
        for plot in result.plots:
            shutil.copyfile(out_dir / plot, images / f"bench-{plot}")
        section = scenario_section(meta, result, "img")
        head, _, rest = text.partition(start)
        tail = rest.partition(end)[2]
        text = f"{head}{start}\n{section}{end}{tail}"
        done.append(result.name)
    docs.write_text(text)
    return done
