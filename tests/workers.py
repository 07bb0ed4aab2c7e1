"""``murmur worker start`` as a real process, for tests.

``WorkerProcess`` runs ``python -m murmur worker start ...`` from the repository's root and
reads its stderr (the worker's log lines, JSON with ``--log-format json``) line by line on a
thread, so a test waits for the line it needs (never a fixed sleep) and stops the worker
with signals, as a process supervisor would.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio

REPO = Path(__file__).resolve().parents[1]
#: How long any one step may take before the test fails (a bound, never a sleep).
STEP_SECONDS = 20.0


def command_env(**extra: str) -> dict[str, str]:
    """This process's environment without Murmur's settings, with ``src`` and ``tests`` on
    the path (the app modules tests name live in ``tests``), plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {
            "MURMUR_APP",
            "MURMUR_BROKER",
            "MURMUR_NAMESPACE",
            "MURMUR_RATE_LIMITS",
            "PYTHONPATH",
        }
    }
    path = os.pathsep.join((str(REPO / "src"), str(REPO / "tests")))
    return {**env, "PYTHONPATH": path, "COLUMNS": "100", **extra}


class WorkerProcess:
    """``murmur worker start *args`` in a subprocess; its stderr read line by line on a thread.

    ``lines`` holds every line read so far (for failure messages).
    """

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "murmur", "worker", "start", *args],
            cwd=REPO,
            env=env if env is not None else command_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="test-worker-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            try:
                record = json.loads(line)
            except ValueError:
                continue  # not a JSON log line (a traceback): kept in ``lines``
            if isinstance(record, dict) and "event" in record:
                self._queue.put(record)
        self._queue.put(None)  # the process ended

    def output(self) -> str:
        return "\n".join(self.lines)

    def next_event(self, name: str, **fields: Any) -> dict[str, Any]:
        """The next JSON log line whose event is ``name`` and whose ``fields`` are as given
        (blocking, bounded)."""
        while True:
            try:
                record = self._queue.get(timeout=STEP_SECONDS)
            except queue.Empty:
                raise AssertionError(f"no {name} line; stderr so far:\n{self.output()}") from None
            if record is None:
                self._queue.put(None)  # still ended for the next call
                raise AssertionError(f"the worker exited before {name}; stderr:\n{self.output()}")
            if record["event"] == name and all(record.get(k) == v for k, v in fields.items()):
                return record

    async def wait_for(self, name: str, **fields: Any) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(lambda: self.next_event(name, **fields))

    async def exit_code(self) -> int:
        return await anyio.to_thread.run_sync(lambda: self.proc.wait(timeout=STEP_SECONDS))

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> int:
        """SIGTERM (the worker drains, then exits); its exit status (killed if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STEP_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.close()
        return code

    def close(self) -> None:
        """Kill it if it still runs; release its pipe and reader thread."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stderr is not None:
            self._reader.join()
            self.proc.stderr.close()
