"""Broker servers of a test's own, on a free port, to stop and start again mid-test.

The shared local servers (Redis on 6379, NATS on 4222) are never restarted by a test:
a test that needs a broker outage starts its own ``redis-server`` or ``nats-server``
here, kills it by its pid and starts it again on the same port with the same data
directory. Readiness is the server's own "ready" log line, never a sleep.
"""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import threading
from pathlib import Path

#: How long a server may take to start or stop before the test fails.
SERVER_SECONDS = 20.0


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class BrokerServer:
    """One broker server process; ``start``, ``kill`` and ``start`` again on one port."""

    #: The line the server writes once it accepts connections.
    ready_line = ""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    @property
    def url(self) -> str:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        """Start the server; returns once it accepts connections."""
        assert self.proc is None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.proc = proc
        ready: queue.Queue[bool] = queue.Queue()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if self.ready_line in line:
                    ready.put(True)
            ready.put(False)

        threading.Thread(target=read, name="test-broker-server-log", daemon=True).start()
        try:
            up = ready.get(timeout=SERVER_SECONDS)
        except queue.Empty:
            up = False
        if not up:
            self.kill()
            raise AssertionError(f"{self.command()} did not start:\n" + "\n".join(self.lines))

    def kill(self) -> None:
        """Kill the server at once (SIGKILL: no shutdown save), and wait for it to be gone."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=SERVER_SECONDS)
        if proc.stdout is not None:
            proc.stdout.close()

    def restart(self) -> None:
        """Kill it and start it again on the same port, with the same data directory."""
        self.kill()
        self.start()


class RedisServer(BrokerServer):
    """``redis-server`` with an append-only file fsynced on every write, in ``data_dir``:
    its streams, consumer groups and pending entries survive a kill."""

    ready_line = "Ready to accept connections"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ]


class VolatileRedisServer(RedisServer):
    """``redis-server`` keeping nothing on disk: a kill loses every stream and group."""

    def command(self) -> list[str]:
        return [
            "redis-server",
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir)),
            *("--save", "", "--appendonly", "no"),
        ]


class NatsServer(BrokerServer):
    """``nats-server`` with JetStream storing in ``data_dir`` (file storage survives a
    kill)."""

    ready_line = "Server is ready"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            "nats-server",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.data_dir),
        ]
