"""Processes of a fleet sharing a Redis policy, for tests: each runs an app script that
writes ``OUT.ready`` once it can start, waits for ``OUT.go``, and writes its report to OUT
(OUT is each process's last argument)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tests.workers import REPO, command_env


def fresh(names: list[str], label: str) -> str:
    """A name no other test uses, noted in ``names`` (the fixture deletes its keys)."""
    name = f"test-{label}-{os.getpid()}-{time.monotonic_ns()}"
    names.append(name)
    return name


def start(app: Path, argvs: Sequence[Sequence[str]]) -> list[subprocess.Popen[bytes]]:
    """``python app *argv`` for each argv, from the repository's root."""
    return [
        subprocess.Popen([sys.executable, str(app), *argv], cwd=REPO, env=command_env())
        for argv in argvs
    ]


def wait_ready(procs: Sequence[subprocess.Popen[bytes]], outs: Sequence[Path]) -> None:
    """Until every process wrote its ready file; fails if one dies or a minute passes."""
    deadline = time.monotonic() + 60
    while not all(Path(f"{out}.ready").exists() for out in outs):
        assert time.monotonic() < deadline, "the fleet's processes did not start"
        assert all(p.poll() is None for p in procs), "a fleet process died"
        time.sleep(0.05)  # polling for files the processes write


def run(app: Path, argvs: Sequence[Sequence[str]]) -> None:
    """Start the processes, let them all go at once, and wait for each to exit with 0."""
    outs = [Path(argv[-1]) for argv in argvs]
    procs = start(app, argvs)
    try:
        wait_ready(procs, outs)
        for out in outs:
            Path(f"{out}.go").write_text("1")
        for proc in procs:
            assert proc.wait(timeout=120) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
