"""Broker servers of a test's own, on a free port, to stop and start again mid-test.

The shared local servers (Redis on 6379, NATS on 4222, RabbitMQ on 5672) are never
restarted by a test: a test that needs a broker outage starts its own ``redis-server``,
``nats-server`` or RabbitMQ node here, kills it by its pid and starts it again on the
same port with the same data directory. Readiness is the server's own "ready" log line,
never a sleep.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import threading
import uuid
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
    #: How long it may take to start before the test fails.
    start_seconds = SERVER_SECONDS

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

    def environment(self) -> dict[str, str] | None:
        """The server's environment (``None``: this process's)."""
        return None

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
            env=self.environment(),
            start_new_session=True,  # its own process group (see ``RabbitServer.kill``)
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
            up = ready.get(timeout=self.start_seconds)
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

    def take_down(self) -> None:
        """Take the server down mid-test (an outage): killed, as ``kill``."""
        self.kill()

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


#: Where the RabbitMQ server's own scripts live (``/usr/sbin/rabbitmq-server`` is a
#: wrapper that switches to the ``rabbitmq`` user and writes to ``/var/log/rabbitmq``).
RABBITMQ_SCRIPTS = Path("/usr/lib/rabbitmq/bin")


class RabbitServer(BrokerServer):
    """A RabbitMQ node of its own (``murmur-test-<random>@localhost``), everything in
    ``data_dir``: its own config file (listening on 127.0.0.1 only), its own Mnesia and
    quorum-queue data (durable queues and persistent messages survive a kill), its own
    Erlang cookie and distribution port, and no plugins. The machine's node, its
    config and its data are never touched.
    """

    ready_line = "Server startup complete"
    start_seconds = 60.0  # an Erlang node: seconds on an idle machine, more on a busy one

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.dist_port = free_port()
        self.node = f"murmur-test-{uuid.uuid4().hex[:8]}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def command(self) -> list[str]:
        script = RABBITMQ_SCRIPTS / "rabbitmq-server"
        return [str(script) if script.exists() else "rabbitmq-server"]

    def environment(self) -> dict[str, str]:
        data = self.data_dir
        config = data / "rabbitmq.conf"
        config.write_text(f"listeners.tcp.1 = 127.0.0.1:{self.port}\n")
        (data / "enabled_plugins").write_text("[].\n")
        (data / "rabbitmq-env.conf").write_text("")
        return {
            **os.environ,
            "HOME": str(data),  # its Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_CONF_ENV_FILE": str(data / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(data / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(data / "mnesia"),
            "RABBITMQ_LOG_BASE": str(data / "log"),
            "RABBITMQ_LOGS": "-",  # to stdout, where the ready line is read
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def take_down(self) -> None:
        """Stop the node (SIGTERM: RabbitMQ shuts down, closing its clients' connections)
        and wait for it to be gone.

        Not killed: a 3.10 node killed (SIGKILL) seconds after a quorum queue was declared
        was seen to come back without that queue's Raft member (its registry, a ``dets``
        file, not yet written), the queue then never confirming a publish; a durable
        queue's messages are on disk either way."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)  # the script stops the node and waits for it
        proc.wait(timeout=self.start_seconds)
        if proc.stdout is not None:
            proc.stdout.close()

    def kill(self) -> None:
        """Kill the node at once: SIGKILL to the process group it was started in (the
        ``rabbitmq-server`` script and the Erlang VM it runs)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        super().kill()
