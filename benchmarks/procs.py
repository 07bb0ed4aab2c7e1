"""Child processes the distributed benchmarks start, and the CPU time of any process.

CPU time comes from ``/proc/<pid>/stat`` (user + system, every thread of the process), so
a broker server's cost per task can be read beside the caller's and the workers'; where
``/proc`` is missing or the process is not readable, the readings are ``None`` and the
report says "n/a". A broker server is found as the process that owns the listening
socket of its port, or else by its program name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Child", "cpu_seconds", "descendants", "listener_pid", "tree_cpu_seconds"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used so far (None if not readable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def descendants(pid: int) -> list[int]:
    """The pids of ``pid``'s children, their children and so on (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of ``pid`` and every process below it (a worker CLI that forks its
    worker processes: dramatiq, taskiq); None if ``pid`` itself is not readable."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(cpu_seconds(child) or 0.0 for child in descendants(pid))


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rpartition(":")[2], 16) == port:
                inodes.add(parts[9])
    return inodes


def listener_pid(port: int, names: Sequence[str] = ()) -> int | None:
    """The pid of the process listening on ``port`` (or, failing that, the only process
    whose program name is one of ``names``); None when neither can be found."""
    inodes = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    by_name: list[int] = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            if inodes:
                for fd in (entry / "fd").iterdir():
                    if os.readlink(fd) in inodes:
                        return int(entry.name)
            if (entry / "comm").read_text().strip() in names:
                by_name.append(int(entry.name))
        except OSError:
            continue
    return by_name[0] if len(by_name) == 1 else None


class Child:
    """A subprocess whose ``stream`` ("stdout" or "stderr") is read line by line on a
    thread until it prints a line containing ``ready``; the rest is kept for errors."""

    def __init__(
        self, argv: Sequence[str], *, ready: str, stream: str, env: dict[str, str], cwd: Path
    ) -> None:
        pipe = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, stream: subprocess.PIPE}
        self.proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=pipe["stdout"],
            stderr=pipe["stderr"],
            text=True,
        )
        self.lines: list[str] = []
        self._signalled = False
        self._below: list[int] = []
        self._ready = threading.Event()
        self._marker = ready
        out = self.proc.stdout if stream == "stdout" else self.proc.stderr
        assert out is not None
        self._reader = threading.Thread(target=self._read, args=(out,), daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, out: object) -> None:
        for line in out:  # type: ignore[attr-defined]
            if len(self.lines) < 200:
                self.lines.append(line.rstrip("\n"))
            if self._marker in line:
                self._ready.set()
        self._ready.set()  # ended: wait_ready checks whether it is still alive

    def wait_ready(self, timeout: float) -> None:
        """Block until the ready line (RuntimeError if the process ends or times out first)."""
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            tail = "\n".join(self.lines[-20:])
            raise RuntimeError(f"{self.proc.args!r} did not start in {timeout:.0f}s:\n{tail}")

    def signal_stop(self) -> None:
        """Send SIGTERM once (``stop`` then waits): stops several children at once."""
        if self.proc.poll() is None and not self._signalled:
            self._below = descendants(self.proc.pid)
            self._signalled = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; then SIGKILL
        whatever it had started (worker processes of a worker CLI) that is still there."""
        self.signal_stop()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in self._below:
            if cpu_seconds(pid) is not None:  # still there
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        self._reader.join(timeout=5)
