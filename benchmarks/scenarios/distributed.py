"""Scenario "distributed": Murmur through real brokers to worker processes, beside raw
FastStream on the same brokers, in one run.

For each broker (``memory://``, Redis Streams, NATS JetStream, RabbitMQ), with one worker
and then two:

* **throughput**: ``runtime.gather(noop, N tasks, max_concurrency=CAP)`` end to end, in
  tasks/s (the caller's clock, from the first publish to the last result);
* **latency**: ``runtime.run(noop, task)`` one after the other, p50 and p99 of the round
  trips;
* **CPU per task**: the caller's process CPU (``time.process_time``), each worker
  process's and the broker server's (``/proc/<pid>/stat``) over the throughput batch,
  divided by N.

Workers are real ``murmur worker start`` processes (``--concurrency 50 --log-format
json``, ready once they log ``worker.started``), except on ``memory://``, which only
works within one process (in-process ``Worker`` objects; their CPU is the caller's).

Beside them, on the same broker and in the same run: a raw FastStream caller/worker pair
(``benchmarks/faststream_pair.py``: one message at a time, and batched where FastStream
has batch subscribers), and the task queues saq, taskiq, arq, dramatiq, celery and the
PyPI package murmur-runtime 0.1.0, each in its own virtualenv (``benchmarks/queue_peers.py``;
on Redis, dramatiq on RabbitMQ too). And a pydantic-ai ``FunctionModel`` row: the same
agent through one Redis worker vs in-process, paired repetitions.

Everything a run creates on a broker lives under a namespace of its own and is deleted at
the end (streams, JetStream streams and consumers, queues).
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import queue_peers
from ..faststream_pair import CHUNK
from ..harness import REPO_ROOT, Stats, save_figure
from ..peer_venv import clean_env
from ..procs import Child, cpu_seconds, listener_pid
from ..registry import Headline, RunConfig, Scenario, ScenarioResult, Status, Table, register

__all__ = ["BROKERS", "Plan", "Row", "measure", "headlines", "rows_table", "run"]

NAME = "distributed"
APP = "benchmarks.distributed_app"
AGENTS = ("noop", "echo_model")
#: Broker kind -> (URL, port of the local server, program names of the server).
BROKERS: dict[str, tuple[str, int | None, tuple[str, ...]]] = {
    "memory": ("memory://bench", None, ()),
    "redis": ("redis://127.0.0.1:6379", 6379, ("redis-server",)),
    "nats": ("nats://127.0.0.1:4222", 4222, ("nats-server",)),
    "rabbit": ("amqp://guest:guest@127.0.0.1:5672/", 5672, ("beam.smp",)),
}
LABEL = {"memory": "memory://", "redis": "Redis Streams", "nats": "NATS JetStream"}
LABEL["rabbit"] = "RabbitMQ"
CAP = 200
WORKER_CONCURRENCY = 50
START_SECONDS = 60.0
MURMUR = "murmur (this repo)"
FS_ONE = "FastStream raw, one at a time"
FS_BATCH = "FastStream raw, batched"
#: The task queues measured beside Murmur (row names: "<dist> <version>").
PEERS = tuple(peer.label for peer in queue_peers.QUEUE_PEERS)
MURMUR_CONFIG = (
    f"`gather(max_concurrency={CAP})`; `murmur worker start --concurrency {WORKER_CONCURRENCY}`"
)
FS_CONFIG = {
    "one": f"≤ {CAP} outstanding, one publish per task; the worker acks each after its reply",
    "batch": f"batch subscriber ({CHUNK} a read), replies and the caller's publishes "
    f"pipelined in chunks of {CHUNK}",
}


@dataclass(frozen=True)
class Plan:
    n: int
    latency_n: int
    reps: int
    fm_n: int
    #: Bound on one batch (a stuck worker fails its row, not the whole run).
    batch_timeout: float


@dataclass
class Row:
    """One system on one broker: every repetition's figures."""

    system: str
    broker: str
    workers: int
    n: int
    tps: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    cpu_us: dict[str, list[float | None]] = field(
        default_factory=lambda: {"caller": [], "workers": [], "broker": []}
    )
    error: str | None = None
    #: How the system was configured (the table's "configuration" column).
    config: str = ""

    def median(self, part: str) -> float | None:
        values = self.cpu_us[part]
        if not values or any(v is None for v in values):
            return None
        return statistics.median(v for v in values if v is not None)

    def tps_stats(self) -> Stats | None:
        return Stats.of(self.tps) if self.tps else None

    def percentile(self, q: float) -> float | None:
        if not self.latency_ms:
            return None
        ordered = sorted(self.latency_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def to_json(self) -> dict[str, Any]:
        stats = self.tps_stats()
        return {
            "system": self.system,
            "broker": self.broker,
            "workers": self.workers,
            "n": self.n,
            "tasks_per_s": [round(v, 1) for v in self.tps],
            "tasks_per_s_stats": None if stats is None else stats.to_json(),
            "latency_p50_ms": self.percentile(0.5),
            "latency_p99_ms": self.percentile(0.99),
            "latency_samples": len(self.latency_ms),
            "cpu_us_per_task": self.cpu_us,
            "error": self.error,
            "config": self.config,
        }


def _plan(config: RunConfig) -> Plan:
    if config.quick:
        return Plan(n=300, latency_n=30, reps=config.pick_reps(1, 1), fm_n=200, batch_timeout=30)
    return Plan(n=10_000, latency_n=300, reps=config.pick_reps(3, 1), fm_n=2_000, batch_timeout=300)


def _server_up(port: int | None) -> bool:
    if port is None:
        return True
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _env() -> dict[str, str]:
    env = {k: v for k, v in clean_env().items() if not k.startswith("MURMUR_")}
    env["PYTHONPATH"] = f"{REPO_ROOT / 'src'}:{REPO_ROOT}"
    return env


def _murmur_worker(url: str, namespace: str) -> Child:
    argv = [sys.executable, "-m", "murmur", "worker", "start", "--app", APP]
    argv += ["--broker", url, "--namespace", namespace]
    argv += ["--concurrency", str(WORKER_CONCURRENCY), "--log-format", "json"]
    return Child(argv, ready='"worker.started"', stream="stderr", env=_env(), cwd=REPO_ROOT)


def _faststream_worker(kind: str, url: str, namespace: str, mode: str) -> Child:
    config = json.dumps({"kind": kind, "url": url, "namespace": namespace, "mode": mode})
    argv = [sys.executable, "-m", "benchmarks.faststream_pair", config]
    return Child(argv, ready="ready", stream="stdout", env=_env(), cwd=REPO_ROOT)


async def _started(child: Child) -> Child:
    await asyncio.to_thread(child.wait_ready, START_SECONDS)
    return child


def _cpu(pids: Sequence[int]) -> float | None:
    readings = [cpu_seconds(pid) for pid in pids]
    if not readings or any(r is None for r in readings):
        return None
    return sum(r for r in readings if r is not None)


async def _measure(
    row: Row,
    plan: Plan,
    batch: Callable[[int], Awaitable[None]],
    one: Callable[[], Awaitable[None]] | None,
    workers: Sequence[int],
    broker: int | None,
) -> None:
    """Warm up, then ``plan.reps`` times: a timed batch of N (with CPU readings), then
    ``plan.latency_n`` single round trips (none when ``one`` is None)."""
    async with asyncio.timeout(plan.batch_timeout):
        await batch(min(plan.n, 100))
        if one is not None:
            for _ in range(5):
                await one()
    for _ in range(plan.reps):
        pids_before = (_cpu(workers), _cpu([broker] if broker else []))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        async with asyncio.timeout(plan.batch_timeout):
            await batch(plan.n)
        wall, caller = time.perf_counter() - wall0, time.process_time() - cpu0
        pids_after = (_cpu(workers), _cpu([broker] if broker else []))
        row.tps.append(plan.n / wall)
        row.cpu_us["caller"].append(caller / plan.n * 1e6)
        for part, before, after in zip(("workers", "broker"), pids_before, pids_after, strict=True):
            value = None if before is None or after is None else (after - before) / plan.n * 1e6
            row.cpu_us[part].append(value)
        if one is None:
            continue
        async with asyncio.timeout(plan.batch_timeout):
            for _ in range(plan.latency_n):
                began = time.perf_counter()
                await one()
                row.latency_ms.append((time.perf_counter() - began) * 1e3)


@asynccontextmanager
async def _murmur_runtime(url: str, namespace: str) -> AsyncIterator[Any]:
    from murmur import AgentRuntime
    from murmur.distributed import BrokerTransport

    async with AgentRuntime(transport=BrokerTransport(url, namespace=namespace)) as runtime:
        yield runtime


def _checked(results: Sequence[Any], n: int) -> None:
    failed = [r for r in results if not r.is_ok()]
    if len(results) != n or failed:
        first = failed[0].error if failed else None
        raise RuntimeError(f"{len(results)} results for {n} tasks, {len(failed)} failed: {first!r}")


async def _murmur_rows(
    kind: str, namespace: str, plan: Plan, log: Callable[[str], None]
) -> tuple[list[Row], dict[str, Any] | None]:
    """Murmur on ``kind`` with one worker then two (and the FunctionModel pair on Redis)."""
    from murmur import TaskSpec
    from murmur.distributed import Worker

    from ..distributed_app import echo_model, noop

    url, port, names = BROKERS[kind]
    broker_pid = None if port is None else listener_pid(port, names)
    rows: list[Row] = []
    fm: dict[str, Any] | None = None
    async with AsyncExitStack() as stack:
        runtime = await stack.enter_async_context(_murmur_runtime(url, namespace))
        worker_pids: list[int] = []

        async def add_worker() -> None:
            if kind == "memory":
                worker = Worker(
                    url, [noop, echo_model], concurrency=WORKER_CONCURRENCY, namespace=namespace
                )
                await stack.enter_async_context(worker)
                return
            child = _murmur_worker(url, namespace)
            stack.callback(child.stop)
            worker_pids.append((await _started(child)).pid)

        async def batch(n: int) -> None:
            specs = [TaskSpec(input=i) for i in range(n)]
            _checked(await runtime.gather(noop, specs, max_concurrency=CAP), n)

        async def one() -> None:
            _checked([await runtime.run(noop, TaskSpec(input=1))], 1)

        for count in (1, 2):
            log(f"    murmur on {kind}, {count} worker(s)")
            await add_worker()
            row = Row(MURMUR, kind, count, plan.n, config=MURMUR_CONFIG)
            rows.append(row)
            try:
                await _measure(row, plan, batch, one, list(worker_pids), broker_pid)
            except Exception as exc:
                row.error = repr(exc)
                break
            if kind == "redis" and count == 1:
                log(f"    FunctionModel on {kind}: one worker vs in-process")
                fm = await _function_model(runtime, plan)
    return rows, fm


async def _function_model(remote: Any, plan: Plan) -> dict[str, Any]:
    """The FunctionModel agent through one worker vs in-process, paired repetitions."""
    from murmur import AgentRuntime, TaskSpec

    from ..distributed_app import echo_model

    specs = [TaskSpec(input=f"task {i}") for i in range(plan.fm_n)]
    async with AgentRuntime() as local:
        runtimes = {"in-process": local, "one Redis worker": remote}
        tps: dict[str, list[float]] = {name: [] for name in runtimes}
        for runtime in runtimes.values():  # warm-up
            warm = specs[:50]
            _checked(await runtime.gather(echo_model, warm, max_concurrency=CAP), len(warm))
        for rep in range(plan.reps):
            order = list(runtimes) if rep % 2 == 0 else list(reversed(runtimes))
            for name in order:
                began = time.perf_counter()
                async with asyncio.timeout(plan.batch_timeout):
                    results = await runtimes[name].gather(echo_model, specs, max_concurrency=CAP)
                tps[name].append(plan.fm_n / (time.perf_counter() - began))
                _checked(results, plan.fm_n)
    ratio = Stats.of(
        [d / i for d, i in zip(tps["one Redis worker"], tps["in-process"], strict=True)]
    )
    return {"n": plan.fm_n, "tasks_per_s": tps, "ratio": ratio.to_json()}


async def _faststream_row(kind: str, mode: str, namespace: str, plan: Plan) -> Row:
    from ..faststream_pair import FastStreamCaller

    url, port, names = BROKERS[kind]
    row = Row(FS_ONE if mode == "one" else FS_BATCH, kind, 1, plan.n, config=FS_CONFIG[mode])
    child = _faststream_worker(kind, url, namespace, mode)
    caller = FastStreamCaller(kind, url, namespace, mode)
    try:
        await _started(child)
        await caller.start()

        async def batch(n: int) -> None:
            await caller.run_batch(n, CAP)

        broker_pid = None if port is None else listener_pid(port, names)
        # FastStream's NATS batch subscriber holds a lone task until its batch fills or its
        # wait ends (NATS_BATCH_WAIT): no single-task latency for that row.
        one = None if (kind, mode) == ("nats", "batch") else caller.run_one
        await _measure(row, plan, batch, one, [child.pid], broker_pid)
    except Exception as exc:
        row.error = repr(exc)
    finally:
        await caller.stop()
        await asyncio.to_thread(child.stop)
    return row


async def _cleanup(kind: str, namespaces: Sequence[str]) -> None:
    """Delete what the run's namespaces made on ``kind``'s server."""
    from murmur.distributed._adapter import safe_name

    from ..faststream_pair import channels

    url = BROKERS[kind][0]
    if kind == "redis":
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(url)
        try:
            for namespace in namespaces:
                keys = [key async for key in client.scan_iter(match=f"{namespace}.*")]
                if keys:
                    await client.delete(*keys)
        finally:
            await client.aclose()
    elif kind == "nats":
        import nats
        from nats.js.errors import NotFoundError

        nc = await nats.connect(url)
        try:
            for namespace in namespaces:
                own = (f"{safe_name(namespace)}-{kind}" for kind in ("tasks", "dead"))
                for stream in (*own, channels(namespace)["stream"]):
                    with suppress(NotFoundError):
                        await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()
    elif kind == "rabbit":
        import aio_pika

        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            for namespace in namespaces:
                queues = [f"{namespace}.tasks.{safe_name(agent)}" for agent in AGENTS]
                queues += [channels(namespace)["tasks"], channels(namespace)["reply"]]
                queues += [f"{namespace}.dead", f"{namespace}.agents"]  # + callers' registry
                for queue in queues:
                    await channel.queue_delete(queue)
                await channel.exchange_delete(f"{namespace}.control")  # workers' control fanout
        finally:
            await connection.close()


async def _broker_block(
    kind: str, plan: Plan, log: Callable[[str], None], prefix: str
) -> tuple[list[Row], dict[str, Any] | None]:
    namespaces = [f"{prefix}-murmur", f"{prefix}-fs-one", f"{prefix}-fs-batch"]
    rows: list[Row] = []
    fm = None
    try:
        rows, fm = await _murmur_rows(kind, namespaces[0], plan, log)
        modes = {"memory": (), "rabbit": ("one",)}.get(kind, ("one", "batch"))
        for mode, namespace in zip(("one", "batch"), namespaces[1:], strict=True):
            if mode in modes:
                log(f"    FastStream raw on {kind}, {mode}")
                rows.append(await _faststream_row(kind, mode, namespace, plan))
    finally:
        await _cleanup(kind, namespaces)
    return rows, fm


def _fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def rows_table(rows: Sequence[Row]) -> Table:
    table = Table(
        "End to end, no-op tasks: tasks/s (median [min-max]), single-task round trip, "
        "CPU µs per task (median)",
        [
            "system",
            "broker",
            "workers",
            "N",
            "tasks/s",
            "p50 ms",
            "p99 ms",
            "CPU caller",
            "CPU worker(s)",
            "CPU broker",
            "CPU total",
            "÷ best task queue",
            "configuration",
        ],
    )
    for row in rows:
        stats = row.tps_stats()
        best = best_peer(rows, row.broker, row.workers)
        vs_best = (
            "-"
            if best is None or stats is None
            else f"{stats.median / statistics.median(best.tps):.2f}x"
        )
        parts = [row.median(p) for p in ("caller", "workers", "broker")]
        if row.broker == "memory":
            parts[1] = parts[2] = None
        total = sum(p for p in parts if p is not None) if parts[0] is not None else None
        table.rows.append(
            [
                row.system,
                LABEL[row.broker],
                str(row.workers),
                f"{row.n:,}",
                _failed(row)
                if stats is None
                else f"{stats.median:,.0f} [{stats.min:,.0f}-{stats.max:,.0f}]",
                _fmt(row.percentile(0.5), 2),
                _fmt(row.percentile(0.99), 2),
                _fmt(parts[0]),
                "in caller" if row.broker == "memory" else _fmt(parts[1]),
                "-" if row.broker == "memory" else _fmt(parts[2]),
                _fmt(total),
                vs_best,
                row.config,
            ]
        )
    return table


def _failed(row: Row) -> str:
    text = row.error or "no result"
    return text if text.startswith("skipped") else f"error: {text}"


def best_peer(rows: Sequence[Row], broker: str, workers: int) -> Row | None:
    """The task-queue peer with the highest median tasks/s on ``broker`` with ``workers``
    worker processes (None if none was measured there)."""
    measured = [r for r in rows if r.system in PEERS and (r.broker, r.workers) == (broker, workers)]
    measured = [r for r in measured if r.tps]
    return max(measured, key=lambda r: statistics.median(r.tps), default=None)


def _find(rows: Sequence[Row], system: str, broker: str, workers: int = 1) -> Row | None:
    for row in rows:
        if (row.system, row.broker, row.workers) == (system, broker, workers) and row.tps:
            return row
    return None


def headlines(rows: Sequence[Row], fm: dict[str, Any] | None) -> list[Headline]:
    out: list[Headline] = []

    def tps(label: str, row: Row | None, target: float) -> None:
        stats = None if row is None else row.tps_stats()
        if stats is not None:
            out.append(
                Headline(
                    label,
                    stats.median,
                    "/s",
                    f"{stats.min:,.0f}-{stats.max:,.0f}",
                    f"≥ {target:,.0f} tasks/s",
                    stats.median >= target,
                )
            )

    redis, nats = _find(rows, MURMUR, "redis"), _find(rows, MURMUR, "nats")
    tps("distributed, Redis Streams, 1 worker: tasks/s end to end", redis, 5000)
    tps("distributed, NATS JetStream, 1 worker: tasks/s end to end", nats, 3000)
    for workers in (1, 2):
        ours, best = _find(rows, MURMUR, "redis", workers), best_peer(rows, "redis", workers)
        if ours is not None and best is not None:
            value = statistics.median(ours.tps) / statistics.median(best.tps)
            out.append(
                Headline(
                    f"distributed, Redis, {workers} worker(s): murmur ÷ the best task queue "
                    f"beside it ({best.system}, {statistics.median(best.tps):,.0f} tasks/s)",
                    value,
                    "x",
                    "",
                    "≥ 5x" if workers == 1 else "",
                    value >= 5 if workers == 1 else None,
                )
            )
    for kind, label, floor in (
        ("redis", "Redis, 1 worker: murmur ÷ FastStream one-at-a-time", None),
        ("rabbit", "RabbitMQ, 1 worker: murmur ÷ FastStream one-at-a-time", 2.0),
    ):
        ours, theirs = _find(rows, MURMUR, kind), _find(rows, FS_ONE, kind)
        if ours is not None and theirs is not None:
            value = statistics.median(ours.tps) / statistics.median(theirs.tps)
            target = "" if floor is None else f"≥ {floor:g}x"
            passed = None if floor is None else value >= floor
            out.append(Headline(f"distributed, {label}", value, "x", "", target, passed))
    for row, limit in ((redis, 3.0), (nats, 2.0)):
        p50 = None if row is None else row.percentile(0.5)
        if row is not None and p50 is not None:
            out.append(
                Headline(
                    f"distributed, {LABEL[row.broker]}: single-task round trip p50",
                    p50,
                    "ms",
                    f"p99 {_fmt(row.percentile(0.99), 2)} ms",
                    f"≤ {limit:g} ms",
                    p50 <= limit,
                )
            )
    if redis is not None:
        parts = [redis.median(p) for p in ("caller", "workers", "broker")]
        known = [p for p in parts if p is not None]
        if known:
            total = sum(known)
            out.append(
                Headline(
                    "distributed, Redis, 1 worker: CPU per no-op task (caller + worker + broker)"
                    + ("" if len(known) == 3 else "; broker n/a"),
                    total,
                    "us",
                    " + ".join(_fmt(p) for p in parts),
                    "≤ 250 µs",
                    total <= 250 if len(known) == 3 else None,
                )
            )
    if fm is not None:
        ratio = fm["ratio"]
        out.append(
            Headline(
                f"distributed, {fm['n']:,} FunctionModel tasks: one Redis worker ÷ in-process "
                "throughput",
                ratio["median"],
                "x",
                f"{ratio['min']:.2f}-{ratio['max']:.2f}",
                "≥ 0.8x",
                ratio["median"] >= 0.8,
            )
        )
    return out


async def measure(
    kinds: Sequence[str], plan: Plan, log: Callable[[str], None], prefix: str = ""
) -> tuple[list[Row], dict[str, Any] | None]:
    """Every row on the brokers ``kinds``; what a broker's block creates lives under the
    namespaces ``<prefix>-<kind>-*`` (a random prefix by default), deleted after it."""
    prefix = prefix or f"bench-{uuid.uuid4().hex[:8]}"
    rows: list[Row] = []
    fm = None
    for kind in kinds:
        block, found = await _broker_block(kind, plan, log, f"{prefix}-{kind}")
        rows += block
        fm = fm or found
    return rows, fm


def peer_rows(
    config: RunConfig, plan: Plan, kinds: Sequence[str], prefix: str = ""
) -> tuple[list[Row], dict[str, Any]]:
    """The task queues (``queue_peers.QUEUE_PEERS``) on the brokers ``kinds`` that are up,
    each in its own virtualenv: made when missing in a full run (or with
    ``--setup-peers``), else the peer's row says it was skipped. One worker, and two in a
    full run; every key and queue a peer made is deleted after it."""
    prefix = prefix or f"bench-{uuid.uuid4().hex[:8]}"
    create = config.setup_peers if config.setup_peers is not None else not config.quick
    peer_plan = queue_peers.PeerPlan(
        n=plan.n,
        latency_n=plan.latency_n,
        reps=plan.reps,
        workers=(1,) if config.quick else (1, 2),
        timeout=plan.batch_timeout,
    )
    peers = queue_peers.QUEUE_PEERS
    venvs = queue_peers.prepare(peers, config.venvs_dir, create=create, log=config.log)
    rows: list[Row] = []
    info: dict[str, Any] = {}
    for peer in peers:
        python, venv = venvs[peer.key]
        info[peer.key] = {
            "label": peer.label,
            "config": peer.config,
            "venv_name": peer.spec.venv_name,
            "venv": venv,
            "runs": [],
        }
        for broker in (b for b in peer.brokers if b in kinds):
            if python is None:
                reason = "skipped: no virtualenv (see the task-queue table)"
                rows.append(Row(peer.label, broker, 1, plan.n, error=reason, config=peer.config))
                continue
            for workers in peer_plan.workers:
                namespace = f"{prefix}-{peer.key}-{broker}-{workers}"
                row = Row(peer.label, broker, workers, plan.n, config=peer.config)
                rows.append(row)
                config.log(f"    {peer.label} on {broker}, {workers} worker(s)")
                began = time.perf_counter()
                run: dict[str, Any] = {"broker": broker, "workers": workers}
                hello: dict[str, Any] = {}
                try:
                    queue_peers.measure_peer(
                        peer, python, broker, workers, peer_plan, namespace, row, hello
                    )
                except Exception as exc:
                    row.error = repr(exc)
                finally:
                    run["versions"] = hello.get("versions")
                    queues = (
                        [namespace + s for s in peer.rabbit_queues] if broker == "rabbit" else []
                    )
                    run["keys_deleted"] = queue_peers.cleanup(namespace, queues)
                    run["seconds"] = round(time.perf_counter() - began, 1)
                    info[peer.key]["runs"].append(run)
                if row.error is not None:
                    break
    return rows, info


def peers_table(info: dict[str, Any]) -> Table:
    """What each task queue ran with: its virtualenv, versions and run times."""
    table = Table(
        "Task queues: virtualenvs and runs",
        ["peer", "virtualenv", "versions (caller)", "runs (broker, workers: seconds)", "keys"],
    )
    for peer in info.values():
        venv = peer["venv"]
        runs = peer["runs"]
        versions = next((r["versions"] for r in runs if r.get("versions")), None) or {}
        table.rows.append(
            [
                peer["label"],
                f"missing: {str(venv['error'])[:300]}"
                if venv.get("error")
                else f"benchmarks/.venvs/{peer['venv_name']} (Python {venv.get('python')})",
                ", ".join(f"{k} {v}" for k, v in versions.items()) or "-",
                ", ".join(f"{r['broker']} {r['workers']}: {r['seconds']:.0f}" for r in runs) or "-",
                str(sum(r["keys_deleted"] for r in runs)) + " deleted" if runs else "-",
            ]
        )
    return table


def run(config: RunConfig) -> ScenarioResult:
    started = time.perf_counter()
    plan = _plan(config)
    kinds = [k for k, (_, port, _) in BROKERS.items() if _server_up(port)]
    down = [k for k in BROKERS if k not in kinds]
    rows, fm = asyncio.run(measure(kinds, plan, config.log))
    peer_results, peer_info = peer_rows(config, plan, kinds)
    order = list(BROKERS)
    rows = sorted([*rows, *peer_results], key=lambda r: order.index(r.broker))
    tables = [rows_table(rows)]
    if fm is not None:
        tables.append(
            Table(
                "pydantic-ai FunctionModel agent, tasks/s (median of repetitions)",
                ["runtime", "N", "tasks/s", "÷ in-process (paired)"],
                [
                    [
                        name,
                        f"{fm['n']:,}",
                        f"{statistics.median(values):,.0f}",
                        "-"
                        if name == "in-process"
                        else f"{fm['ratio']['median']:.2f}x "
                        f"({fm['ratio']['min']:.2f}-{fm['ratio']['max']:.2f})",
                    ]
                    for name, values in fm["tasks_per_s"].items()
                ],
            )
        )
    tables.append(peers_table(peer_info))
    notes = [
        f"No-op async function agent; N={plan.n:,} tasks per batch, max_concurrency={CAP}, "
        f"{plan.reps} repetition(s) after a warm-up; latency: {plan.latency_n} sequential "
        "single-task runs per repetition (p50/p99 over all of them). Workers: `murmur "
        f"worker start --concurrency {WORKER_CONCURRENCY} --log-format json` processes (on "
        "memory://, in-process Worker objects: their CPU is in the caller's column).",
        "CPU per task: the caller's process CPU, the worker processes' and the broker "
        "server's (found as the owner of its port; /proc/<pid>/stat) over the timed batch, "
        "÷ N. The broker server's figure includes whatever else uses it at the time (the "
        "machine is shared).",
        "FastStream raw: benchmarks/faststream_pair.py, a worker subprocess answering each "
        "task id on a reply channel, the caller in this process. 'one at a time': one "
        "message per handler call, acked after its reply is published (Redis stream + "
        "consumer group, NATS JetStream pull consumer, RabbitMQ queue), at most "
        f"{CAP} outstanding; 'batched': batch subscribers (Redis StreamSub(batch=True), NATS "
        "PullSub(batch=True), which waits up to 1 s to fill a batch, hence no latency "
        "figures for it), replies pipelined, "
        "the caller's publishes pipelined in chunks; FastStream has no RabbitMQ batch "
        "subscriber.",
        "FastStream's NATS batch subscriber waits up to 1 s to fill a batch of "
        "200: with a small N (quick mode) the last partial batch's wait dominates that row.",
        "Each system's repetitions run back to back (workers started once per system); "
        "systems on one broker run one after the other, minutes apart at most.",
        "Task queues (benchmarks/queue_peers.py, benchmarks/peer_scripts/*_queue.py): each "
        "in its own virtualenv under benchmarks/.venvs/, its workers started with its own "
        "worker command (or what that command runs) as separate processes, its caller a "
        "separate process that times each batch itself (wall clock and its own CPU) and sends "
        "the same no-op task (returns its integer input; results checked). A batch sends all "
        "N tasks the way the library sends many (its batch call, or one call per task), then "
        "waits for every result; no per-task log lines on any worker (Murmur's logs none). "
        "Their 'CPU worker(s)' counts every process a worker command forks. The "
        "configuration column says how each ran; '÷ best task queue' divides a row's median "
        "tasks/s by the best task queue's on the same broker with the same number of "
        "workers.",
        "murmur-runtime 0.1.0 has no plain-function agents: its no-op task runs a "
        "pydantic-ai agent on a FunctionModel (structured output), a few ms of CPU per task "
        "that the other rows do not pay.",
        "The task queues run after Murmur and FastStream on every broker, one after the "
        "other, each with a namespace of its own that is deleted after it.",
    ]
    if down:
        notes.append(f"No local server, not measured: {', '.join(down)}.")
    failed = [r for r in rows if r.error and not r.error.startswith("skipped")]
    if failed:
        errors = [f"{r.system} on {r.broker} ({r.workers}): {r.error}" for r in failed]
        notes.append(f"Rows that failed: {errors}")
    skipped = sorted({r.system for r in rows if r.error and r.error.startswith("skipped")})
    if skipped:
        notes.append(
            f"Not measured, no virtualenv in this mode: {', '.join(skipped)} (a full run, or "
            "`--setup-peers`, makes them under benchmarks/.venvs/)."
        )
    status: Status = "reduced" if config.quick or down else "ok"
    if config.quick:
        notes.append(
            f"Quick mode: N={plan.n}, {plan.latency_n} latency samples, one repetition, "
            f"FunctionModel N={plan.fm_n}, task queues with one worker only, and only those "
            "whose virtualenv exists already (`--setup-peers` makes them); the full run uses "
            "N=10,000, 300 samples, 3 repetitions, 2,000 FunctionModel tasks and one and two "
            "workers for every task queue."
        )
    return ScenarioResult(
        name=NAME,
        title="Distributed",
        status=status,
        headlines=headlines(rows, fm),
        tables=tables,
        notes=notes,
        data={
            "plan": plan.__dict__,
            "rows": [r.to_json() for r in rows],
            "function_model": fm,
            "brokers_down": down,
            "peers": peer_info,
        },
        seconds=time.perf_counter() - started,
    )


def plot(result: ScenarioResult, out_dir: Path) -> list[Path]:
    rows = [r for r in result.data.get("rows", []) if r["tasks_per_s_stats"]]
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {MURMUR: "tab:blue", FS_ONE: "tab:orange", FS_BATCH: "navajowhite"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 4.8))
    short = {MURMUR: "murmur", FS_ONE: "FastStream one", FS_BATCH: "FastStream batch"}
    labels = [
        f"{LABEL[r['broker']]}\n{short.get(r['system'], r['system'])}"
        + (f" x{r['workers']}" if r["system"] == MURMUR or r["workers"] > 1 else "")
        for r in rows
    ]
    stats = [r["tasks_per_s_stats"] for r in rows]
    left.bar(
        range(len(rows)),
        [s["median"] for s in stats],
        yerr=[[s["median"] - s["min"] for s in stats], [s["max"] - s["median"] for s in stats]],
        capsize=2,
        color=[colors.get(r["system"], "grey") for r in rows],
    )
    left.set_yscale("log")
    left.set_ylabel("tasks/s end to end (median, log scale)")
    left.set_title("Throughput, no-op tasks", fontsize=9)
    p50 = [r["latency_p50_ms"] or 0 for r in rows]
    p99 = [r["latency_p99_ms"] or 0 for r in rows]
    right.bar(range(len(rows)), p99, color="lightgrey", label="p99")
    right.bar(
        range(len(rows)), p50, color=[colors.get(r["system"], "grey") for r in rows], label="p50"
    )
    right.set_yscale("log")
    right.set_ylabel("single-task round trip, ms (log scale)")
    right.set_title("Latency (p50 over p99)", fontsize=9)
    for ax in (left, right):
        ax.set_xticks(range(len(rows)), labels, fontsize=6, rotation=60, ha="right")
        ax.grid(axis="y", alpha=0.3)
    return [save_figure(fig, out_dir / "distributed.png")]


register(
    Scenario(
        name=NAME,
        title="Distributed",
        description=(
            "gather through memory://, Redis, NATS and RabbitMQ to `murmur worker start` "
            "processes (one and two): tasks/s, single-task p50/p99, CPU per task of caller, "
            "workers and broker; raw FastStream on the same brokers; a FunctionModel agent "
            "through one worker vs in-process."
        ),
        run=run,
        plot=plot,
        order=70,
    )
)
