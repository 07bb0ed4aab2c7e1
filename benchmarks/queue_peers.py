"""The task-queue peers of the ``distributed`` scenario: saq, taskiq, arq, dramatiq, celery
and the PyPI package murmur-runtime 0.1.0, each on the same local broker as Murmur, each in
its own virtualenv (``benchmarks/.venvs/<dist>-<version>``, made by :mod:`.peer_venv`).

For each peer and each worker count: worker processes run the peer's own worker (its CLI,
or what its CLI runs) from that virtualenv, and a caller process
(``peer_scripts/<peer>_queue.py``, driven over stdin/stdout by
``peer_scripts/_queue_caller.py``) sends the no-op tasks and times them itself. This
process only reads the CPU time of the workers (with every process they fork) and of the
broker server around each batch, and deletes what the peer left on the broker afterwards:
every key, queue and stream a peer makes has the run's prefix in its name.

Each peer runs with a configuration meant to be its usual fast path for tiny tasks (the
table says which); the scripts' docstrings say why.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .peer_venv import PEER_SCRIPTS_DIR, PeerSpec, clean_env, ensure_venv
from .procs import Child, cpu_seconds, listener_pid, tree_cpu_seconds

__all__ = ["QUEUE_PEERS", "PeerPlan", "QueuePeer", "cleanup", "measure_peer", "prepare"]

REDIS_URL = "redis://127.0.0.1:6379"
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: Broker kind -> (port, program names of the server): to read the server's CPU time.
SERVERS: dict[str, tuple[int, tuple[str, ...]]] = {
    "redis": (6379, ("redis-server",)),
    "rabbit": (5672, ("beam.smp",)),
}
WORKER_READY = "bench-worker-ready"
START_SECONDS = 90.0


@dataclass(frozen=True)
class QueuePeer:
    """One task queue: its virtualenv, its worker command and its configuration."""

    #: Short name, used in prefixes ("saq").
    key: str
    spec: PeerSpec
    #: Brokers it is measured on ("redis", "rabbit").
    brokers: tuple[str, ...]
    #: The configuration, as the table shows it.
    config: str
    #: Worker command: a program of the venv's bin directory, then its arguments.
    worker: str
    #: Merged into the scripts' ``BENCH_PEER`` configuration.
    settings: dict[str, Any] = field(default_factory=dict)
    #: What a worker prints once it consumes, and where.
    ready: str = WORKER_READY
    stream: str = "stdout"
    #: On RabbitMQ: the queues it makes, as suffixes of the prefix (deleted afterwards).
    rabbit_queues: tuple[str, ...] = ()
    #: Seconds a worker gets to exit after SIGTERM before it (and what it forked) is killed.
    stop_seconds: float = 20.0

    @property
    def label(self) -> str:
        return f"{self.spec.dist} {self.spec.version}"


def _spec(dist: str, version: str, import_name: str, **kwargs: Any) -> PeerSpec:
    return PeerSpec(dist, version, import_name, f"{dist.replace('-', '_')}_queue.py", **kwargs)


QUEUE_PEERS: tuple[QueuePeer, ...] = (
    QueuePeer(
        key="saq",
        # saq 0.26.4 imports typing_extensions without declaring it.
        spec=_spec("saq", "0.26.4", "saq", extras=("redis",), also=("typing-extensions>=4.12",)),
        brokers=("redis",),
        config="`saq saq_queue.settings` (1 process), concurrency 20; caller: `Queue.map` "
        "(polls every 0.5 s, saq's default), one task: enqueue + `Job.refresh` (pub/sub)",
        worker="python -m saq saq_queue.settings",
        settings={"concurrency": 20},
    ),
    QueuePeer(
        key="taskiq",
        spec=_spec("taskiq", "0.13.0", "taskiq", also=("taskiq-redis==1.2.4",)),
        brokers=("redis",),
        config="taskiq-redis 1.2.4 `RedisStreamBroker` + `RedisAsyncResultBackend`; `taskiq "
        "worker --workers 1` (max 100 async tasks); caller: `.kiq` ≤ 50 at once, "
        "`wait_result` polls every 10 ms",
        worker="taskiq worker taskiq_queue:broker --workers 1 --log-level WARNING",
        settings={"poll_s": 0.01},
        # Its worker process goes on reading the stream after SIGTERM (taskiq 0.13.0,
        # taskiq-redis 1.2.4, seen here for 20 s and more): nothing is left to finish by
        # then, so it is killed sooner.
        stop_seconds=3.0,
    ),
    QueuePeer(
        key="arq",
        spec=_spec("arq", "0.28.0", "arq"),
        brokers=("redis",),
        config="`run_worker` (1 process), max_jobs 50, poll_delay 10 ms (defaults 10 and "
        "0.5 s: ~4x slower); caller: `enqueue_job` ≤ 50 at once, `Job.result` polls every "
        "10 ms",
        worker="python arq_queue.py worker",
        settings={"max_jobs": 50, "poll_delay": 0.01, "poll_s": 0.01},
    ),
    QueuePeer(
        key="dramatiq",
        spec=_spec("dramatiq", "2.2.1", "dramatiq", extras=("rabbitmq", "redis")),
        brokers=("redis", "rabbit"),
        config="`dramatiq --processes 1 --threads 8` (50 threads: no faster), results in "
        "Redis on both brokers (blocking pop); caller: `send` each, then "
        "`get_result(block=True)` in order",
        worker="dramatiq dramatiq_queue --processes 1 --threads 8",
        ready="Worker process is ready for action",
        stream="stderr",
        rabbit_queues=("", ".DQ", ".XQ"),
    ),
    QueuePeer(
        key="celery",
        spec=_spec("celery", "5.7.0", "celery", extras=("redis",)),
        brokers=("redis",),
        config="`worker --pool threads --concurrency 8 --prefetch-multiplier 4` without "
        "gossip/mingle/heartbeat/remote control, Redis result backend; caller: "
        "`group(...).apply_async().get()`",
        worker="python celery_queue.py worker --pool threads --concurrency 8 "
        "--prefetch-multiplier 4",
    ),
    QueuePeer(
        key="mrt",
        # The requirements of the in-process `peers` scenario's spec: one venv serves both.
        spec=_spec("murmur-runtime", "0.1.0", "murmur", extras=("redis",)),
        brokers=("redis",),
        config="`murmur.worker.Worker` (what `murmur worker start` runs), concurrency 10, "
        "prefetch 5 (its defaults); a no-op *pydantic-ai* agent (FunctionModel, "
        "structured output): it has no plain-function agents; caller: `gather`",
        worker="python murmur_runtime_queue.py worker",
        settings={"concurrency": 10, "prefetch": 5},
    ),
)


@dataclass(frozen=True)
class PeerPlan:
    n: int
    latency_n: int
    reps: int
    workers: tuple[int, ...]
    timeout: float


def prepare(
    peers: Sequence[QueuePeer], venvs_dir: Path, *, create: bool, log: Callable[[str], None]
) -> dict[str, tuple[Path | None, dict[str, Any]]]:
    """Each peer's venv interpreter (None when missing and not to be made) and its info."""
    return {p.key: ensure_venv(p.spec, venvs_dir, create=create, log=log) for p in peers}


class _Caller:
    """The peer's caller process: one JSON request a line in, one JSON reply a line out."""

    def __init__(self, python: Path, script: str, env: dict[str, str], timeout: float) -> None:
        self.timeout = timeout
        self.proc = subprocess.Popen(
            [str(python), script],
            cwd=PEER_SCRIPTS_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._replies: queue.Queue[str | None] = queue.Queue()
        self.errors: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._drain, daemon=True).start()
        self.hello = self._reply(START_SECONDS)
        if not self.hello.get("ready"):
            raise RuntimeError(f"caller did not start: {self.hello}")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self._replies.put(line)
        self._replies.put(None)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors = [*self.errors[-30:], line.rstrip("\n")]

    def _reply(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no reply from the caller in {timeout:.0f}s") from None
        if line is None:
            tail = "\n".join(self.errors[-10:])
            raise RuntimeError(f"the caller exited ({self.proc.wait()}):\n{tail}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def request(self, op: str, n: int = 0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "n": n}) + "\n")
        self.proc.stdin.flush()
        reply = self._reply(self.timeout)
        if reply.get("error"):
            raise RuntimeError(f"{op} {n}: {reply['error']}")
        return reply

    def close(self, *, graceful: bool) -> None:
        """Ask it to stop (``graceful``: it closes its client), else kill it."""
        if self.proc.poll() is None and graceful:
            self.timeout = 30
            try:
                self.request("stop")
                self.proc.wait(timeout=30)
            except (OSError, RuntimeError, TimeoutError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _worker_cpu(pids: Sequence[int]) -> float | None:
    readings = [tree_cpu_seconds(pid) for pid in pids]
    if not readings or any(r is None for r in readings):
        return None
    return sum(r for r in readings if r is not None)


def measure_peer(
    peer: QueuePeer,
    python: Path,
    broker: str,
    workers: int,
    plan: PeerPlan,
    prefix: str,
    row: Any,
    report: dict[str, Any],
) -> None:
    """Start ``workers`` workers and a caller of ``peer`` on ``broker`` under ``prefix``;
    warm up, then ``plan.reps`` times a timed batch of ``plan.n`` (CPU readings into
    ``row.cpu_us``, tasks/s into ``row.tps``) and ``plan.latency_n`` single round trips
    (``row.latency_ms``). What the caller reports when it starts (its versions) goes into
    ``report``. Always stops every process it started; the keys are left to
    :func:`cleanup`."""
    settings = {"url": REDIS_URL, "rabbit_url": RABBIT_URL, "prefix": prefix, "broker": broker}
    env = clean_env()
    env["PYTHONPATH"] = str(PEER_SCRIPTS_DIR)
    env["BENCH_PEER"] = json.dumps({**settings, **peer.settings})
    bin_dir = python.parent
    program, *args = peer.worker.split()
    argv = [str(bin_dir / program), *args]
    port, names = SERVERS[broker]
    server = listener_pid(port, names)
    children: list[Child] = []
    caller: _Caller | None = None
    finished = False
    try:
        for _ in range(workers):
            child = Child(argv, ready=peer.ready, stream=peer.stream, env=env, cwd=PEER_SCRIPTS_DIR)
            children.append(child)
        for child in children:
            child.wait_ready(START_SECONDS)
        caller = _Caller(python, peer.spec.script, env, plan.timeout)
        report.update(caller.hello)
        caller.request("batch", min(plan.n, 100))
        caller.request("latency", 5)
        pids = [c.pid for c in children]
        for _ in range(plan.reps):
            before = (_worker_cpu(pids), None if server is None else cpu_seconds(server))
            done = caller.request("batch", plan.n)
            after = (_worker_cpu(pids), None if server is None else cpu_seconds(server))
            row.tps.append(plan.n / done["wall_s"])
            row.cpu_us["caller"].append(done["cpu_s"] / plan.n * 1e6)
            for part, b, a in zip(("workers", "broker"), before, after, strict=True):
                row.cpu_us[part].append(None if b is None or a is None else (a - b) / plan.n * 1e6)
            row.latency_ms.extend(caller.request("latency", plan.latency_n)["ms"])
        finished = True
    finally:
        if caller is not None:
            caller.close(graceful=finished)
        for child in children:
            child.signal_stop()
        for child in children:
            child.stop(peer.stop_seconds)


def cleanup(prefix: str, rabbit_queues: Sequence[str] = ()) -> int:
    """Delete every Redis key whose name contains ``prefix`` (and the RabbitMQ queues
    named); returns how many keys there were."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()
    if rabbit_queues:
        _delete_queues(rabbit_queues)
    return len(keys)


def _delete_queues(names: Sequence[str]) -> None:
    import asyncio

    import aio_pika

    async def delete() -> None:
        connection = await aio_pika.connect(RABBIT_URL)
        try:
            channel = await connection.channel()
            for name in names:
                await channel.queue_delete(name)
        finally:
            await connection.close()

    asyncio.run(delete())
