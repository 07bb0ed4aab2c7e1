"""Scenario "rate_limits": what a ``RateLimit`` costs a call, how many Redis round trips a
fleet-wide one makes, and how close a fleet of runtimes sharing one comes to its rpm.

1. **Overhead.** The overhead scenario's ``gather`` (no-op function agents, cap 100) by a
   runtime with rate limits that never make a call wait (rpm and tpm of 10^9 a minute: an
   admission every µs at most), paired with the bare runtime (no events), interleaved: the
   added µs per call. One limit (``rpm``), and two (``rpm`` + ``tpm``, whose token estimate
   is made and corrected from the usage each call reports, and a second ``rpm`` limit by
   agent name). In-process, then the same limits in Redis.
2. **Round trips.** With the limits in Redis, every request the process writes to Redis
   is counted on the client's connections (a pipeline would count once), over all the
   calls of a batch: round trips per call.
3. **Achieved vs configured rpm.** 1, 3 and 10 runtimes in this process, each with its own
   ``RateLimit`` of one name in Redis (all they share is Redis), gather together more calls
   than the limit admits; each call's start is noted at the agent. The period is scaled
   down (a "minute" of a few seconds) so that a run takes seconds: achieved rpm = calls
   started within ``periods`` periods of the first, per period; and the most calls started
   in any window of one period, which must not pass rpm.
"""

from __future__ import annotations

import functools
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from murmur import AgentContext, AgentRuntime, FunctionAgent, RateLimit, RuntimeOptions, TaskSpec
from murmur.events import MultiEventEmitter

from ..harness import (
    Contender,
    Samples,
    Stats,
    Timing,
    available_backends,
    fmt_spread,
    interleave,
    run_on,
    timed,
)
from ..peer_venv import PEER_SCRIPTS_DIR, PeerSpec, ensure_venv, run_peer_script
from ..registry import Headline, RunConfig, Scenario, ScenarioResult, Status, Table, register

__all__ = ["OVERHEAD_TARGET_US", "RPM_TOLERANCE", "ROUND_TRIP_TARGET", "run"]

NAME = "rate_limits"
REDIS_URL = "redis://127.0.0.1:6379"
CAP = 100
#: The issue's targets.
OVERHEAD_TARGET_US = 5.0
ROUND_TRIP_TARGET = 1.0
RPM_TOLERANCE = 0.02
#: Limits no batch here comes near: an admission per µs at most.
HUGE = 10**9

BARE = "bare, no events"
ONE = "1 limit (rpm)"
TWO = "2 limits (rpm + tpm, and rpm by agent)"


async def noop(value: int, ctx: AgentContext) -> int:
    ctx.report_usage(input_tokens=3, output_tokens=2)  # the tpm limit corrects its estimate
    return value


AGENT = FunctionAgent(noop, name="noop")


def _limits(variant: str, store: str | None) -> list[RateLimit]:
    """Fresh limits (fresh names in Redis: no state carried over between repetitions)."""
    tag = uuid.uuid4().hex[:12]
    if variant == ONE:
        return [RateLimit(rpm=HUGE, store=store, name=f"bench-{tag}-a")]
    return [
        RateLimit(rpm=HUGE, tpm=HUGE, store=store, name=f"bench-{tag}-a"),
        RateLimit(agent="noop", rpm=HUGE, store=store, name=f"bench-{tag}-b"),
    ]


def _delete(limits: Sequence[RateLimit] = (), *, matching: str | None = None) -> None:
    """Delete the limits' keys, and those ``matching`` a pattern."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys: list[Any] = [f"murmur:ratelimit:{limit.name}" for limit in limits]
        if matching is not None:
            keys += client.scan_iter(match=matching)
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class _RoundTrips:
    """Counts the requests written to Redis by every asyncio client of this process."""

    def __init__(self) -> None:
        self.count = 0

    @contextmanager
    def counting(self) -> Iterator[None]:
        from redis.asyncio.connection import AbstractConnection

        original = AbstractConnection.send_packed_command
        trips = self

        async def send(self: Any, command: Any, check_health: bool = True) -> None:
            trips.count += 1
            await original(self, command, check_health)

        AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
        try:
            yield
        finally:
            AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


@dataclass
class OverheadCell:
    """Every variant of one (store, N) on some backends."""

    store: str | None
    n: int
    backends: tuple[str, ...]
    reps: int
    samples: dict[tuple[str, str], Samples]
    round_trips: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return "in-process" if self.store is None else "Redis"

    def added_us(self, variant: str, backend: str, *, cpu: bool = False) -> Stats:
        """The paired per-call differences from the bare runtime, in wall (or process
        CPU) µs."""
        mine, base = self.samples[(variant, backend)], self.samples[(BARE, backend)]
        if cpu:
            pairs = zip(mine.cpu_per_task_us, base.cpu_per_task_us, strict=True)
        else:
            pairs = zip(mine.per_task_us, base.per_task_us, strict=True)
        return Stats.of([m - b for m, b in pairs])

    def to_json(self) -> dict[str, Any]:
        rows = []
        for (variant, backend), samples in self.samples.items():
            row = samples.to_json()
            if variant != BARE:
                row["added_us_per_call"] = self.added_us(variant, backend).to_json()
                row["added_cpu_us_per_call"] = self.added_us(variant, backend, cpu=True).to_json()
            if (variant, backend) in self.round_trips:
                row["round_trips_per_call"] = self.round_trips[(variant, backend)]
            rows.append(row)
        return {"store": self.store, "n": self.n, "reps": self.reps, "results": rows}


async def _gather_once(
    variant: str,
    store: str | None,
    specs: Sequence[TaskSpec],
    trips: _RoundTrips,
    counted: list[float],
) -> Timing:
    limits = [] if variant == BARE else _limits(variant, store)
    options = RuntimeOptions(rate_limits=limits)
    try:
        async with AgentRuntime(options=options, event_emitter=MultiEventEmitter([])) as runtime:
            if limits:
                await runtime.run(AGENT, TaskSpec(input=-1))  # connected, scripts loaded
            before = trips.count
            timing, results = await timed(lambda: runtime.gather(AGENT, specs, max_concurrency=CAP))
            if store is not None:
                counted.append((trips.count - before) / len(specs))
    finally:
        if store is not None and limits:
            _delete(limits)
    if [r.output for r in results] != list(range(len(specs))):
        raise RuntimeError(f"{variant}: wrong outputs or errors: {results[:3]}")
    return timing


def measure_overhead(
    store: str | None, n: int, backends: tuple[str, ...], reps: int
) -> OverheadCell:
    """Each variant on each backend, ``reps`` times interleaved, after one warm-up each."""
    specs = [TaskSpec(input=i) for i in range(n)]
    trips = _RoundTrips()
    counted: dict[tuple[str, str], list[float]] = {}
    contenders = []
    for backend in backends:
        for variant in (BARE, ONE, TWO):
            sink = counted.setdefault((variant, backend), [])
            main = functools.partial(_gather_once, variant, store, specs, trips, sink)
            contenders.append(Contender(variant, backend, _on(backend, main)))
    with trips.counting():
        samples = interleave(contenders, n, reps, warmup=True)
    cell = OverheadCell(store, n, backends, reps, samples)
    if store is not None:
        for key, values in counted.items():
            if key[0] != BARE:
                cell.round_trips[key] = values[1:]  # the warm-up's first
    return cell


def _on(backend: str, main: Callable[[], Awaitable[Timing]]) -> Callable[[], Timing]:
    return lambda: run_on(backend, main)


# -- achieved rpm ------------------------------------------------------------------------


@dataclass
class Pace:
    """``runtimes`` runtimes sharing one limit of ``rpm`` per ``period`` through Redis."""

    runtimes: int
    rpm: int
    period: float
    periods: int
    starts: list[float] = field(default_factory=list)

    @property
    def achieved(self) -> float:
        """Calls per period at the pace they started: the gaps between the first and the
        last start, all through which the limit was the bottleneck, per period (a start
        late by some ms moves it by that much over the whole span, not by a call)."""
        span = max(self.starts) - min(self.starts)
        return (len(self.starts) - 1) * self.period / span

    @property
    def most_in_a_period(self) -> int:
        ordered = sorted(self.starts)
        best = j = 0
        for i, t in enumerate(ordered):
            while j < len(ordered) and ordered[j] < t + self.period:
                j += 1
            best = max(best, j - i)
        return best

    @property
    def passed(self) -> bool:
        return self.achieved >= (1 - RPM_TOLERANCE) * self.rpm and self.most_in_a_period <= self.rpm

    def to_json(self) -> dict[str, Any]:
        return {
            "runtimes": self.runtimes,
            "rpm": self.rpm,
            "period_s": self.period,
            "periods": self.periods,
            "calls": len(self.starts),
            "achieved_per_period": self.achieved,
            "most_in_any_period": self.most_in_a_period,
        }


async def _pace(pace: Pace) -> None:
    name = f"bench-pace-{uuid.uuid4().hex[:12]}"
    calls = pace.periods * pace.rpm  # all queued at once: the limit paces every one

    async def call(value: int) -> int:
        pace.starts.append(time.monotonic())
        return value

    agent = FunctionAgent(call, name="call")

    async def share(index: int) -> None:
        limit = RateLimit(rpm=pace.rpm, period=pace.period, store=REDIS_URL, name=name)
        options = RuntimeOptions(rate_limits=[limit])
        async with AgentRuntime(options=options, event_emitter=MultiEventEmitter([])) as runtime:
            mine = range(index, calls, pace.runtimes)
            await runtime.gather(agent, [TaskSpec(input=i) for i in mine], max_concurrency=CAP)

    try:
        async with anyio.create_task_group() as tg:
            for index in range(pace.runtimes):
                tg.start_soon(share, index)
    finally:
        _delete([RateLimit(rpm=1, name=name)])


def measure_pace(counts: Sequence[int], rpm: int, period: float, periods: int) -> list[Pace]:
    paces = []
    for runtimes in counts:
        pace = Pace(runtimes, rpm, period, periods)
        run_on("asyncio", functools.partial(_pace, pace))
        paces.append(pace)
    return paces


# -- the libraries weighed (peers) -------------------------------------------------------

#: Rate-limiter libraries, each in its own virtualenv, driven by its peer script.
LIMITER_PEERS = (
    PeerSpec("limits", "5.8.0", "limits", "ratelimit_limits.py", extras=("redis",)),
    PeerSpec(
        "pyrate-limiter",
        "4.5.1",
        "pyrate_limiter",
        "ratelimit_pyrate.py",
        also=("redis==8.1.0",),
    ),
    PeerSpec("redis-rate-limiters", "0.5.0", "limiters", "ratelimit_redis_rate_limiters.py"),
)
MURMUR_SHARE_SCRIPT = PEER_SCRIPTS_DIR / "ratelimit_murmur.py"
#: The fleet measurement: 3 processes sharing rpm=600, the "minute" scaled to 3 s.
SHARE: dict[str, Any] = {"rpm": 600, "period": 3.0, "periods": 2, "threads": 8, "processes": 3}
#: Waiters of the order measurement (arriving 10 ms apart at a limit of 10 a second).
WAITERS = 10
MURMUR_FACTS = {
    "weights": "yes (tpm: estimated tokens)",
    "correction": "yes (from the usage reported)",
    "waiting": "reserves its place in every limit at once, sleeps until it "
    "(first come, first served)",
    "several_limits": "all limits of one Redis in one script",
}


@dataclass
class Share:
    """``processes`` processes sharing ``rpm`` per ``period``: their admission times."""

    stamps: list[float]
    start: float
    rpm: int
    period: float
    periods: int

    @property
    def achieved(self) -> float:
        """Admissions per period over the measured periods."""
        return len(self.stamps) / self.periods

    @property
    def most_in_a_period(self) -> int:
        pace = Pace(runtimes=1, rpm=self.rpm, period=self.period, periods=self.periods)
        pace.starts = self.stamps
        return pace.most_in_a_period

    def to_json(self) -> dict[str, Any]:
        return {
            "admissions": len(self.stamps),
            "achieved_per_period": self.achieved,
            "most_in_any_period": self.most_in_a_period,
        }


def _share(run: Callable[[dict[str, Any]], dict[str, Any]], prefix: str) -> Share:
    out = run({**SHARE, "mode": "share", "url": REDIS_URL, "prefix": prefix})
    return Share(out["stamps"], out["start"], SHARE["rpm"], SHARE["period"], SHARE["periods"])


def _murmur_share(prefix: str) -> Share:
    import json
    import os
    import subprocess
    import sys

    def run(config: dict[str, Any]) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, str(MURMUR_SHARE_SCRIPT), json.dumps(config)],
            env=os.environ.copy(),  # this interpreter's murmur
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    return _share(run, prefix)


async def _murmur_order(prefix: str, trips: _RoundTrips) -> dict[str, Any]:
    """``WAITERS`` calls arriving 10 ms apart at a stored limit of 10 a second whose
    capacity is spent: the order they start in, and the round trips each cost."""
    started: list[int] = []

    async def call(value: int) -> int:
        if value >= 0:
            started.append(value)
        return value

    agent = FunctionAgent(call, name="order")
    limit = RateLimit(rpm=11, period=1.0, store=REDIS_URL, name=f"{prefix}-order")
    async with AgentRuntime(options=RuntimeOptions(rate_limits=[limit])) as runtime:
        for _ in range(50):  # spend the capacity (until a call had to wait)
            if (await runtime.run(agent, TaskSpec(input=-1))).rate_limit_wait >= 0.03:
                break
        before = trips.count
        async with anyio.create_task_group() as tg:
            for index in range(WAITERS):
                tg.start_soon(runtime.run, agent, TaskSpec(input=index))
                await anyio.sleep(0.01)
        count = trips.count - before
    return {"admitted": started, "trips_per_admission": count / max(1, len(started))}


def _inversions(order: Sequence[int]) -> int:
    """Pairs admitted out of arrival order (0: first come, first served)."""
    return sum(1 for i, a in enumerate(order) for b in order[i + 1 :] if a > b)


def measure_peers(config: RunConfig, cells: Sequence[OverheadCell]) -> list[dict[str, Any]]:
    """Murmur's limiter and each library of ``LIMITER_PEERS`` (in its own virtualenv: made
    when missing in a full run or with ``--setup-peers``, else its row says it was
    skipped), measured alike: per-acquisition cost, round trips, order of waiters, and 3
    processes sharing one limit."""
    create = config.setup_peers if config.setup_peers is not None else not config.quick
    rows: list[dict[str, Any]] = []
    prefix = f"bench-rlpeer-{uuid.uuid4().hex[:8]}"
    local, stored = cells[0], cells[1]
    trips = _RoundTrips()
    try:
        with trips.counting():
            order = run_on("asyncio", functools.partial(_murmur_order, f"{prefix}-murmur", trips))
        murmur: dict[str, Any] = {
            "dist": "murmur (this repo)",
            "version": "",
            "local_cpu_us": local.added_us(ONE, "asyncio", cpu=True).median,
            "redis_cpu_us": stored.added_us(ONE, "asyncio", cpu=True).median,
            "redis_trips": statistics.median(stored.round_trips[(ONE, "asyncio")]),
            "two_trips": statistics.median(stored.round_trips[(TWO, "asyncio")]),
            "order": order,
            "facts": MURMUR_FACTS,
            "share": _murmur_share(f"{prefix}-murmur").to_json(),
        }
        rows.append(murmur)
        config.log("    peers: murmur measured")
        for spec in LIMITER_PEERS:
            python, info = ensure_venv(spec, config.venvs_dir, create=create, log=config.log)
            if python is None:
                rows.append({"dist": spec.dist, "version": spec.version, "skipped": info["error"]})
                continue
            tag = f"{prefix}-{spec.dist}"
            measured = run_peer_script(
                python,
                spec,
                {"url": REDIS_URL, "prefix": tag, "n": 300, "n_local": 3_000, "waiters": WAITERS},
                timeout=300,
            )
            measured["share"] = _share(
                functools.partial(run_peer_script, python, spec), tag
            ).to_json()
            local_us, redis_us = measured.pop("local_us"), measured.pop("redis_us")
            measured["local_cpu_us"] = None if local_us is None else local_us[1]
            measured["redis_cpu_us"] = redis_us[1]
            measured["local_wall_us"] = None if local_us is None else local_us[0]
            measured["redis_wall_us"] = redis_us[0]
            rows.append(measured)
            config.log(f"    peers: {spec.dist} measured")
    finally:
        _delete(matching=f"*{prefix}*")
    return rows


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _peer_rows(peers: Sequence[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for peer in peers:
        label = f"{peer['dist']} {peer['version']}".strip()
        if "skipped" in peer:
            rows.append([label, f"skipped: {peer['skipped']}", *["-"] * 8])
            continue
        facts, order, share = peer["facts"], peer["order"], peer["share"]
        two = peer["two_trips"]
        rows.append(
            [
                label,
                _us(peer["local_cpu_us"]),
                _us(peer["redis_cpu_us"]),
                f"{peer['redis_trips']:.2f}",
                "not expressible" if two is None else f"{two:.2f}",
                facts["weights"],
                facts["correction"],
                facts["waiting"],
                f"{_inversions(order['admitted'])} out of order, "
                f"{order['trips_per_admission']:.2f} trips per admission",
                f"{share['most_in_any_period']} most in any period, "
                f"{share['achieved_per_period']:.0f} per period",
            ]
        )
    return rows


# -- report ------------------------------------------------------------------------------


def _redis_up() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


def _overhead_rows(cells: Sequence[OverheadCell]) -> list[list[str]]:
    rows = []
    for cell in cells:
        for backend in cell.backends:
            for variant in (BARE, ONE, TWO):
                samples = cell.samples[(variant, backend)]
                added = cpu = "-"
                if variant != BARE:
                    added = fmt_spread(cell.added_us(variant, backend))
                    cpu = fmt_spread(cell.added_us(variant, backend, cpu=True))
                trips = cell.round_trips.get((variant, backend))
                target = "-"
                if variant != BARE:
                    target = f"≤ {OVERHEAD_TARGET_US:g} µs" if cell.store is None else "info"
                rows.append(
                    [
                        cell.where,
                        f"{cell.n:,}",
                        backend,
                        variant,
                        fmt_spread(samples.stats()),
                        added,
                        cpu,
                        "-" if not trips else f"{statistics.median(trips):.2f}",
                        target,
                    ]
                )
    return rows


def _pace_rows(paces: Sequence[Pace]) -> list[list[str]]:
    return [
        [
            str(pace.runtimes),
            f"{pace.rpm} per {pace.period:g} s",
            f"{pace.achieved:.1f} ({pace.achieved / pace.rpm:.2%})",
            str(pace.most_in_a_period),
            "PASS" if pace.passed else "MISS",
        ]
        for pace in paces
    ]


def summarise(cells: Sequence[OverheadCell], paces: Sequence[Pace]) -> list[Headline]:
    headlines = []
    for cell in cells:
        for backend in cell.backends:
            for variant in (ONE, TWO):
                added = cell.added_us(variant, backend, cpu=True)
                in_process = cell.store is None
                headlines.append(
                    Headline(
                        label=f"rate limits, {cell.where}, {backend}: {variant}, added CPU "
                        "time per call",
                        value=added.median,
                        unit="us",
                        spread=f"{added.min:.2f}-{added.max:.2f}",
                        target=f"≤ {OVERHEAD_TARGET_US:g} µs" if in_process else "",
                        passed=added.median <= OVERHEAD_TARGET_US if in_process else None,
                    )
                )
                trips = cell.round_trips.get((variant, backend))
                if trips:
                    most = max(trips)
                    headlines.append(
                        Headline(
                            label=f"rate limits, Redis, {backend}: {variant}, round trips per "
                            "call (the most over repetitions, in %)",
                            value=most * 100,
                            unit="%",
                            target=f"≤ {ROUND_TRIP_TARGET * 100:.0f}%",
                            passed=most <= ROUND_TRIP_TARGET,
                        )
                    )
    for pace in paces:
        headlines.append(
            Headline(
                label=f"rate limits, {pace.runtimes} runtime(s) sharing one Redis limit: "
                f"achieved ÷ configured rpm (most in any period: {pace.most_in_a_period} "
                f"of {pace.rpm})",
                value=pace.achieved / pace.rpm * 100,
                unit="%",
                target=f"≥ {100 * (1 - RPM_TOLERANCE):.0f}%, never above rpm",
                passed=pace.passed,
            )
        )
    return headlines


def run(config: RunConfig) -> ScenarioResult:
    started = time.perf_counter()
    backends = tuple(b for b in available_backends(config.backends) if b in ("asyncio", "trio"))
    quick = config.quick
    reps = config.pick_reps(7, 3)
    cells = [measure_overhead(None, 3_000 if quick else 50_000, backends, reps)]
    config.log(f"    in-process: {time.perf_counter() - started:.1f}s")
    paces: list[Pace] = []
    peers: list[dict[str, Any]] = []
    up = _redis_up()
    if up:
        cells.append(measure_overhead(REDIS_URL, 200 if quick else 3_000, backends, reps))
        config.log(f"    Redis overhead: {time.perf_counter() - started:.1f}s")
        # A pace of 600 a minute (one request every ~0.1 s; quick: 1,200, every ~50 ms),
        # counted over a window of seconds instead of 60 s. A faster pace would measure
        # this process's scheduling stalls (one of s seconds lets the s / interval calls
        # due meanwhile start together: up to ~50 ms seen on the shared 2-core machine), a
        # smaller rpm the one request of slack per period (rpm - 1 of rpm: 98% at 50).
        rpm, period, periods = (100, 5.0, 1) if quick else (300, 30.0, 1)
        paces = measure_pace((1, 3, 10), rpm, period, periods)
        config.log(f"    achieved rpm: {time.perf_counter() - started:.1f}s")
        peers = measure_peers(config, cells)
        config.log(f"    libraries: {time.perf_counter() - started:.1f}s")
    notes = [
        "Overhead: `runtime.gather` of no-op function agents (each reports 5 tokens of "
        f"usage), cap {CAP}, in a fresh event loop per repetition, {reps} repetitions "
        "interleaved with the bare runtime (no limits, no events) after one warm-up each; "
        "'added' is the median (and min-max) of the paired per-call differences, in wall "
        "time and in process CPU time; the target is read on CPU time, which the other "
        "work on a shared machine disturbs less (an admission is CPU work only). The limits "
        f"(rpm and tpm of {HUGE:,} a minute) never make a call wait: what is measured is an "
        "admission and its correction. In Redis, each repetition's first call (connection, "
        "script load) is outside the clock and outside the count, and the limits have fresh "
        "names (deleted after).",
        "Round trips: requests written to Redis by this process's asyncio clients "
        "(`send_packed_command`, which a pipeline calls once), over the timed batch, per "
        "call. Under Trio the client runs on the runtime's asyncio helper loop.",
        "Achieved rpm: 1, 3 and 10 runtimes in one process (asyncio), each with its own "
        "`RateLimit` of one name in Redis, gathering together more calls than the limit "
        "admits; starts noted at the agent (`time.monotonic()`). The period is scaled down "
        "(the pace of 600 a minute, one request every ~0.1 s, over a window of 30 s; quick: "
        "1,200 a minute over 5 s) so that a row takes seconds. 'achieved': (calls - 1) per the "
        "time from the first start to the last, per period; 'most in any period': the most "
        "starts in any window of one period. The limit paces `rpm - 1` a period by design "
        "(one of slack for jitter: see docs/policies.md). A stall of this process (a "
        "machine shared with other work) delays the calls due meanwhile, which then start "
        "together: one of slack absorbs a stall of up to one interval.",
    ]
    notes.append(
        "Libraries: Murmur's limiter beside `limits`, `pyrate-limiter` and "
        "`redis-rate-limiters`, each library in its own virtualenv (made by a full run or "
        "`--setup-peers`; a quick run measures those that exist) through its synchronous "
        "API (benchmarks/peer_scripts/ratelimit_*.py). 'CPU µs per acquisition': process "
        "CPU time of 3,000 acquisitions in-process and 300 in Redis of one limit that never "
        "refuses (Murmur: the added CPU µs per call of the overhead table, one limit, "
        "asyncio, which also counts the stage and the correction after the call). 'Round "
        "trips': commands redis-py writes per acquisition, one limit, and rpm + tpm (100 "
        "tokens) for one call (Murmur: its two-limit variant). 'Order': "
        f"{WAITERS} waiters arriving 10 ms apart at a Redis limit of 10 a second whose "
        "capacity is spent: pairs admitted out of arrival order, and Redis round trips per "
        "admission while they waited. 'Shared': "
        f"{SHARE['processes']} processes sharing {SHARE['rpm']} per {SHARE['period']:g} s "
        f"(a minute scaled down) through Redis, each with {SHARE['threads']} threads (Murmur: "
        f"a gather of at most {SHARE['threads']} calls) acquiring as fast as it admits, "
        f"for {SHARE['periods']} periods: the most admissions (`time.time()` when the "
        "acquisition returned, or the agent started) in any window of one period, which must "
        f"not pass {SHARE['rpm']}, and admissions per period. limits has no waiting: the "
        "caller polls (every 2 ms here); its limit is a moving window. pyrate-limiter: its "
        "default sliding-window-log buckets. redis-rate-limiters: a token bucket of "
        "capacity 1 refilled one token per interval, Redis only. limits' never-refusing "
        "limit is a fixed window (a moving window of 10^9 keeps a list of every hit)."
    )
    if not up:
        notes.append("No Redis on 127.0.0.1:6379: the Redis rows were not measured.")
    if quick:
        notes.append(
            "Quick mode: N = 3,000 in-process and 200 with Redis, 3 repetitions; achieved "
            "rpm with 100 per 5 s, one period's calls (full: N = 50,000 and 3,000, 7 "
            "repetitions; 300 per 30 s, one period's calls)."
        )
    tables = [
        Table(
            "Overhead per call: µs/call median [min-max], added µs/call vs the bare runtime "
            "(paired; wall and process CPU time), Redis round trips per call",
            [
                "where",
                "N",
                "backend",
                "runtime",
                "µs/call",
                "added µs/call",
                "added CPU µs/call",
                "round trips/call",
                "target",
            ],
            _overhead_rows(cells),
        )
    ]
    if paces:
        tables.append(
            Table(
                "Achieved vs configured rpm, runtimes sharing one limit through Redis",
                ["runtimes", "configured", "achieved per period", "most in any period", "verdict"],
                _pace_rows(paces),
            )
        )
    if peers:
        tables.append(
            Table(
                "Rate-limit libraries beside Murmur's limiter: CPU µs per acquisition, Redis "
                "round trips, weights, corrections, waiting, order of waiters, and "
                f"{SHARE['processes']} processes sharing {SHARE['rpm']} per "
                f"{SHARE['period']:g} s",
                [
                    "limiter",
                    "CPU µs in-process",
                    "CPU µs Redis",
                    "round trips, 1 limit",
                    "round trips, rpm + tpm",
                    "weighted (tpm)",
                    "correction after the call",
                    "waiting",
                    "order of waiters",
                    f"shared by {SHARE['processes']} processes",
                ],
                _peer_rows(peers),
            )
        )
    status: Status = "reduced" if quick or not up else "ok"
    return ScenarioResult(
        name=NAME,
        title="Rate limits",
        status=status,
        headlines=summarise(cells, paces),
        tables=tables,
        notes=notes,
        data={
            "overhead": [cell.to_json() for cell in cells],
            "pace": [pace.to_json() for pace in paces],
            "peers": peers,
            "redis": up,
        },
        seconds=time.perf_counter() - started,
    )


register(
    Scenario(
        name=NAME,
        title="Rate limits",
        description=(
            "RateLimit overhead per call in-process and in Redis (with its round trips per "
            "call), and achieved vs configured rpm with 1, 3 and 10 runtimes sharing one "
            "limit through Redis."
        ),
        run=run,
        order=55,
    )
)
