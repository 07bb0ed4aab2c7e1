"""``python -m benchmarks [--quick] [--only NAME,...] ...``: run scenarios, write reports."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from . import scenarios as _scenarios  # noqa: F401 - registers every scenario
from .harness import BACKENDS, REPO_ROOT, available_backends, environment, loadavg, quiet_logging
from .registry import REGISTRY, RunConfig, Scenario, ScenarioResult, scenarios
from .report import DOCS, markdown, update_docs, write

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Murmur's benchmark suite. Results go to benchmarks/results/<mode>/.",
    )
    parser.add_argument("--quick", action="store_true", help="the short run (well under 2 minutes)")
    parser.add_argument("--only", help="comma-separated scenario names to run (see --list)")
    parser.add_argument("--skip", help="comma-separated scenario names not to run")
    parser.add_argument("--list", action="store_true", help="list scenarios and exit")
    parser.add_argument("--reps", type=int, help="repetitions per measurement (override)")
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="event loops to measure, among those installed (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "benchmarks" / "results",
        help="results root; the run writes into <out>/quick or <out>/full",
    )
    parser.add_argument(
        "--venvs",
        type=Path,
        default=REPO_ROOT / "benchmarks" / ".venvs",
        help="where peer virtualenvs live (default: %(default)s)",
    )
    peers = parser.add_mutually_exclusive_group()
    peers.add_argument(
        "--setup-peers",
        dest="setup_peers",
        action="store_const",
        const=True,
        help="create missing peer virtualenvs even in --quick mode",
    )
    peers.add_argument(
        "--no-setup-peers",
        dest="setup_peers",
        action="store_const",
        const=False,
        help="never create peer virtualenvs (skip peers whose venv is missing)",
    )
    parser.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help="also write each scenario's results into its marked section of "
        "docs/benchmarks.md (<!-- bench:NAME:start/end -->) and its plots into docs/img/",
    )
    parser.add_argument(
        "--replot",
        action="store_true",
        help="measure nothing: redraw the plots of the mode's existing results.json",
    )
    return parser


def _replot(out_dir: Path) -> int:
    """Redraw every plot from ``out_dir/results.json`` (after changing a plot function)."""
    source = out_dir / "results.json"
    saved = json.loads(source.read_text())
    for name, entry in saved["scenarios"].items():
        scenario = REGISTRY.get(name)
        if scenario is None or scenario.plot is None or entry["status"] == "error":
            continue
        result = ScenarioResult(name=name, title=entry["title"], data=entry["data"])
        paths = scenario.plot(result, out_dir)
        print(f"{name}: {', '.join(str(p) for p in paths) or 'no plot'}")
    return 0


def _select(only: str | None, skip: str | None) -> list[Scenario]:
    chosen = scenarios()
    names = {s.name for s in chosen}
    for option in (only, skip):
        for name in (option or "").split(","):
            if name and name not in names:
                raise SystemExit(f"unknown scenario {name!r}; known: {', '.join(sorted(names))}")
    if only:
        wanted = set(only.split(","))
        chosen = [s for s in chosen if s.name in wanted]
    if skip:
        unwanted = set(skip.split(","))
        chosen = [s for s in chosen if s.name not in unwanted]
    return chosen


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for scenario in scenarios():
            state = "" if scenario.implemented else "  [planned]"
            print(f"{scenario.name:12} {scenario.title}{state}\n{'':12} {scenario.description}")
        return 0
    quiet_logging()
    requested = tuple(b for b in args.backends.split(",") if b)
    unknown = [b for b in requested if b not in BACKENDS]
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}; known: {', '.join(BACKENDS)}")
    backends = available_backends(requested)
    mode = "quick" if args.quick else "full"
    out_dir = args.out / mode
    if args.replot:
        return _replot(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = RunConfig(
        quick=args.quick,
        reps=args.reps,
        backends=backends,
        out_dir=out_dir,
        venvs_dir=args.venvs,
        setup_peers=args.setup_peers,
        log=_log,
    )
    selected = _select(args.only, args.skip)
    runnable = [s for s in selected if s.implemented]
    planned = [s for s in selected if not s.implemented]
    missing = [b for b in requested if b not in backends]
    started = time.perf_counter()
    meta = environment()
    meta.update(
        mode=mode,
        argv=list(sys.argv[1:] if argv is None else argv),
        started=dt.datetime.now().isoformat(timespec="seconds"),
        backends=list(backends),
        backends_missing=missing,
        loadavg_start=meta.pop("loadavg"),
    )
    _log(
        f"murmur benchmarks ({mode}): {', '.join(s.name for s in runnable)} "
        f"on {', '.join(backends)}"
    )
    if missing:
        _log(f"  not installed, skipped: {', '.join(missing)}")

    results: list[ScenarioResult] = []
    failed = False
    for scenario in runnable:
        assert scenario.run is not None
        _log(f"- {scenario.name}: {scenario.title}")
        began = time.perf_counter()
        try:
            result = scenario.run(config)
        except Exception as exc:
            failed = True
            result = ScenarioResult(
                name=scenario.name,
                title=scenario.title,
                status="error",
                notes=[f"failed: {exc!r}", "```\n" + traceback.format_exc() + "```"],
            )
            _log(traceback.format_exc())
        result.seconds = time.perf_counter() - began
        if scenario.plot is not None and result.status != "error" and not args.no_plots:
            try:
                result.plots = [p.name for p in scenario.plot(result, out_dir)]
            except Exception as exc:
                result.notes.append(f"plotting failed: {exc!r}")
        _log(f"  {scenario.name}: {result.status} in {result.seconds:.0f}s")
        results.append(result)

    meta["loadavg_end"] = loadavg()
    meta["total_seconds"] = round(time.perf_counter() - started, 1)
    json_path, md_path = write(out_dir, meta, results, planned)
    print(markdown(meta, results, planned, images=False))
    print(f"Wrote {json_path}, {md_path} and {sum(len(r.plots) for r in results)} plot(s).")
    if args.update_docs:
        updated = update_docs(meta, results, out_dir)
        print(f"Updated {DOCS}: {', '.join(updated) or 'no marked section for these scenarios'}.")
    return 1 if failed else 0
