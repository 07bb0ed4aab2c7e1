"""The local workers of ``murmur demo --broker``: started, awaited, stopped, cleaned up.

Each worker is a real ``python -m murmur worker start`` process serving the demo's agent
(the app module ``murmur.cli._demo_agents``), in a namespace made for this run. It writes
JSON log lines on stderr, read on a thread: the demo waits for each worker's
``worker.started`` line (it is then taking tasks), and keeps reading so the pipe never
fills. A worker runs in a session of its own, so Ctrl-C in the terminal reaches only the
demo, which then stops its workers itself: SIGTERM (they drain), a bounded wait, and a
kill only for one that is still running. Last, the namespace's channels are deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import anyio

from ..distributed._adapter import load_adapter
from ..distributed._transport import DEFAULT_CONNECT_TIMEOUT
from ..distributed._url import BrokerURL

__all__ = [
    "APP",
    "FAIL_EVERY_ENV",
    "LATENCY_ENV",
    "SEED_ENV",
    "DemoWorkers",
    "DemoWorkerError",
    "delete_namespace",
]

#: The app module the workers serve, and the settings its agent reads from the environment
#: (so it answers as the demo's in-process agent would).
APP = "murmur.cli._demo_agents"
SEED_ENV = "MURMUR_DEMO_SEED"
FAIL_EVERY_ENV = "MURMUR_DEMO_FAIL_EVERY"
LATENCY_ENV = "MURMUR_DEMO_LATENCY"
#: Seconds the workers may take to start (a Python start-up and an import of pydantic-ai on
#: a busy machine, and a connection); a broker that does not answer fails sooner.
START_SECONDS = 60.0
#: Seconds a stopping worker may take to finish what it runs (``--grace``), and to exit.
GRACE_SECONDS = 5.0
STOP_SECONDS = GRACE_SECONDS + 5.0
_WORKER_PREFIX = re.compile(r"^(error: )?worker \S+: ")


class DemoWorkerError(Exception):
    """A demo worker did not start, or stopped while the demo ran; the message says why
    (its own one-line error, when it wrote one)."""


@dataclass
class _Worker:
    name: str
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None


class DemoWorkers:
    """``count`` local worker processes serving the demo's agent on ``url`` in ``namespace``.

    ``start()`` returns once every one is taking tasks; ``stop()`` stops those still
    running (call it on every way out: it is a no-op for workers already gone).
    """

    def __init__(
        self,
        url: BrokerURL,
        namespace: str,
        *,
        count: int,
        concurrency: int,
        seed: int,
        fail_every: int,
        latency: float,
    ) -> None:
        self.url = url
        self.namespace = namespace
        self.count = count
        self.concurrency = concurrency
        self._env = {
            **os.environ,
            # In the environment, not the command line: the process list shows no password.
            "MURMUR_BROKER": url.secret,
            SEED_ENV: str(seed),
            FAIL_EVERY_ENV: str(fail_every),
            LATENCY_ENV: repr(latency),
        }
        self._workers: list[_Worker] = []
        #: (worker index, its ``worker.started`` line) or (index, None) when it exits.
        self._events: queue.Queue[tuple[int, dict[str, object] | None]] = queue.Queue()
        self.started = False
        #: Set once a worker's stderr ends (it exited); the indexes of those that did.
        self._stopped = threading.Event()
        self._ended: list[int] = []

    @property
    def names(self) -> list[str]:
        return [worker.name for worker in self._workers]

    @property
    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers]

    def start(self) -> None:
        """Start the workers and wait (bounded) until each takes tasks.

        Raises:
            DemoWorkerError: one exited first (its error line says why: a broker that
                cannot be reached), or did not start in time.
        """
        for index in range(self.count):
            self._spawn(index, f"demo-worker-{index + 1}")
        waiting = set(range(self.count))
        deadline = time.monotonic() + START_SECONDS
        while waiting:
            try:
                index, started = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise DemoWorkerError(
                    f"the demo's workers did not start within {START_SECONDS:g}s"
                ) from None
            if started is None:
                raise DemoWorkerError(self._failure(self._workers[index]))
            waiting.discard(index)
            self.started = True

    def _spawn(self, index: int, name: str) -> None:
        command = [
            sys.executable,
            "-m",
            "murmur",
            "worker",
            "start",
            "--app",
            APP,
            "--namespace",
            self.namespace,
            "--name",
            name,
            "--concurrency",
            str(self.concurrency),
            "--grace",
            f"{GRACE_SECONDS:g}",
            "--heartbeat",
            "0",
            "--log-format",
            "json",
        ]
        process = subprocess.Popen(
            command,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C in the terminal is the demo's to handle
        )
        worker = _Worker(name, process)
        self._workers.append(worker)
        worker.reader = threading.Thread(
            target=self._read, args=(index, worker), name=f"murmur-demo-{name}", daemon=True
        )
        worker.reader.start()

    def _read(self, index: int, worker: _Worker) -> None:
        stream = worker.process.stderr
        assert stream is not None
        for line in stream:
            worker.lines.append(line.rstrip("\n"))
            if '"worker.started"' not in line:
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == "worker.started":
                    self._events.put((index, record))
        self._ended.append(index)
        self._stopped.set()
        self._events.put((index, None))

    def _failure(self, worker: _Worker) -> str:
        """Why ``worker`` exited before it started: its own error line, if it wrote one."""
        code = worker.process.wait()
        if worker.reader is not None:
            worker.reader.join()
        for line in reversed(worker.lines):
            if line.startswith("error: "):
                return _WORKER_PREFIX.sub("", line)
        if code < 0:
            return f"it was killed by {signal.Signals(-code).name}"
        # Not one of its JSON lines: the end of a traceback, say.
        last = next((line for line in reversed(worker.lines) if line[:1] not in "{ "), "")
        return f"it exited with code {code}" + (f": {last}" if last else "")

    def wait_stopped(self) -> str:
        """Block until a worker stops (killed, out of memory: it stops only when told);
        why it did."""
        self._stopped.wait()
        worker = self._workers[self._ended[0]]
        return f"the demo's worker {worker.name} stopped: {self._failure(worker)}"

    def stop(self) -> None:
        """SIGTERM to each worker still running, a bounded wait, then a kill for any left.

        Only the processes this object started are signalled.
        """
        workers = self._workers
        try:
            for worker in workers:
                if worker.process.poll() is None:
                    worker.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_SECONDS
            for worker in workers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        finally:
            # Also when the wait is interrupted (a second Ctrl-C): none is left running.
            for worker in workers:
                if worker.process.poll() is None:
                    worker.process.kill()
                worker.process.wait()
                if worker.reader is not None:
                    worker.reader.join()
                if worker.process.stderr is not None:
                    worker.process.stderr.close()


def delete_namespace(url: BrokerURL, namespace: str, agents: list[str]) -> None:
    """Delete what the demo's namespace left on the broker (bounded)."""
    adapter = load_adapter(url)(url, namespace=namespace)

    async def delete() -> None:
        with anyio.fail_after(DEFAULT_CONNECT_TIMEOUT):
            await adapter.connect()
            try:
                await adapter.delete_namespace(agents)
            finally:
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await adapter.aclose()

    anyio.run(delete)  # the adapters are asyncio's, whichever loop the demo ran on
