"""The measurements of a rate-limiter peer, shared by the ``ratelimit_*.py`` peer scripts.

Runs inside a peer's own virtualenv (the standard library and ``redis`` only). A peer script
describes its library as a ``Peer``: how to make a limit that never refuses (to time an
acquisition), rpm + tpm limits (weighted by a call's tokens), and a limit that blocks until
it admits (or a poll loop, when the library cannot wait). :func:`main` then measures, each
with the library's synchronous API:

* ``local_us`` / ``redis_us``: (wall, process CPU) µs per acquisition of one limit that
  never refuses, in-process and in Redis (``None``: the library has no such storage);
* ``redis_trips``: Redis round trips per acquisition of that limit; ``two_trips``: of an
  rpm limit and a tpm limit (weighted by 100 tokens) checked for one call;
* ``order``: ``waiters`` threads arrive 10 ms apart at a limit of 10 a second whose
  capacity is already spent: the order they are admitted in (the benchmark counts the
  pairs out of arrival order) and the round trips each admission cost while they waited;
* ``share`` (``mode == "share"``): this process and two more copies of it share one limit
  of ``rpm`` per ``period`` through Redis, each with ``threads`` threads acquiring as fast
  as it admits, for ``periods`` periods from one wall-clock start: every admission's
  ``time.time()`` is printed, and the benchmark counts them.

The result is one JSON object on stdout (the last line). Keys the peer makes all start
with ``config["prefix"]``.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Peer", "RoundTrips", "main"]

Acquire = Callable[[], Any]


@dataclass
class Peer:
    """A library, as the measurements need it."""

    dist: str
    #: ``(store_url or None, name) -> acquire()`` of one limit that never refuses.
    never_refuses: Callable[[str | None, str], Acquire | None]
    #: ``(store_url, name, tokens) -> acquire()`` of rpm and tpm limits for one call.
    rpm_and_tpm: Callable[[str, str, int], Acquire]
    #: ``(store_url, name, rpm, period) -> acquire()``: returns once admitted.
    blocking: Callable[[str, str, int, float], Acquire]
    #: What the table says of the library's API (weights, corrections, waiting).
    facts: dict[str, Any] = field(default_factory=dict)
    #: A share process's own loop (``config -> admission times``), for a library that
    #: does not wait on threads (Murmur's, on an event loop); default: ``blocking`` on
    #: ``config["threads"]`` threads.
    share_child: Callable[[dict[str, Any]], list[float]] | None = None


class RoundTrips:
    """Counts the commands redis-py writes (a pipeline counts once), sync and asyncio."""

    def __init__(self) -> None:
        self.count = 0
        import redis.asyncio.connection as aio
        import redis.connection as sync

        trips = self
        original = sync.AbstractConnection.send_packed_command
        original_aio = aio.AbstractConnection.send_packed_command

        def send(self: Any, command: Any, check_health: bool = True) -> None:
            trips.count += 1
            original(self, command, check_health)

        async def send_aio(self: Any, command: Any, check_health: bool = True) -> None:
            trips.count += 1
            await original_aio(self, command, check_health)

        sync.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
        aio.AbstractConnection.send_packed_command = send_aio  # type: ignore[method-assign]


def _per_call_us(acquire: Acquire, n: int) -> tuple[float, float]:
    """Wall and process CPU µs per acquisition."""
    for _ in range(min(n, 200)):  # warm: connected, scripts loaded
        acquire()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        acquire()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return wall / n * 1e6, cpu / n * 1e6


def _trips(trips: RoundTrips, acquire: Acquire, n: int) -> float:
    acquire()
    before = trips.count
    for _ in range(n):
        acquire()
    return (trips.count - before) / n


def _order(peer: Peer, trips: RoundTrips, url: str, prefix: str, waiters: int) -> dict[str, Any]:
    acquire = peer.blocking(url, f"{prefix}-order", 10, 1.0)
    for _ in range(50):  # spend the capacity (until a call had to wait): every waiter waits
        start = time.monotonic()
        acquire()
        if time.monotonic() - start >= 0.03:
            break
    admitted: list[int] = []
    lock = threading.Lock()

    def wait(index: int) -> None:
        acquire()
        with lock:
            admitted.append(index)

    before = trips.count
    threads = []
    for index in range(waiters):
        thread = threading.Thread(target=wait, args=(index,), daemon=True)
        thread.start()
        threads.append(thread)
        time.sleep(0.01)
    for thread in threads:
        thread.join(30)
    return {
        "admitted": admitted,
        "trips_per_admission": (trips.count - before) / max(1, len(admitted)),
    }


def _share_child(peer: Peer, config: dict[str, Any]) -> list[float]:
    acquire = peer.blocking(
        config["url"], f"{config['prefix']}-share", config["rpm"], config["period"]
    )
    until = config["start"] + config["periods"] * config["period"]
    stamps: list[float] = []
    lock = threading.Lock()

    def loop() -> None:
        while True:
            acquire()
            now = time.time()
            if now >= until:
                return
            with lock:
                stamps.append(now)

    time.sleep(max(0.0, config["start"] - time.time()))
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(config["threads"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(config["periods"] * config["period"] + 30)
    return stamps


def _share(config: dict[str, Any]) -> dict[str, Any]:
    """Three processes (this script, run again) sharing one limit; their admissions."""
    child = {**config, "mode": "share-child", "start": time.time() + 1.5}
    procs = [
        subprocess.Popen(
            [sys.executable, sys.argv[0], json.dumps(child)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(config.get("processes", 3))
    ]
    stamps: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=config["periods"] * config["period"] + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"a share process failed ({proc.returncode})")
        stamps.extend(json.loads(out.strip().splitlines()[-1])["stamps"])
    return {"stamps": sorted(stamps), "start": child["start"]}


def main(peer: Peer) -> None:
    config: dict[str, Any] = json.loads(sys.argv[1])
    mode = config.get("mode", "measure")
    if mode == "share-child":
        child = peer.share_child or (lambda config: _share_child(peer, config))
        print(json.dumps({"stamps": child(config)}))
        return
    if mode == "share":
        print(json.dumps(_share(config)))
        return
    url, prefix, n = config["url"], config["prefix"], config["n"]
    trips = RoundTrips()
    result: dict[str, Any] = {"dist": peer.dist, "version": importlib.metadata.version(peer.dist)}
    local = peer.never_refuses(None, f"{prefix}-local")
    result["local_us"] = None if local is None else _per_call_us(local, config["n_local"])
    stored = peer.never_refuses(url, f"{prefix}-one")
    assert stored is not None
    result["redis_us"] = _per_call_us(stored, n)
    result["redis_trips"] = _trips(trips, stored, n)
    two = peer.rpm_and_tpm(url, f"{prefix}-two", 100)
    result["two_trips"] = None if two is None else _trips(trips, two, n)
    result["order"] = _order(peer, trips, url, prefix, config["waiters"])
    result["facts"] = peer.facts
    print(json.dumps(result))
