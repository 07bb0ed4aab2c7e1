"""The caller's side of a distributed peer, shared by the ``*_queue.py`` peer scripts.

Runs inside a peer's own virtualenv, so it uses the standard library only. A peer script
builds its client, then hands :func:`serve` three functions — ``batch(ids)``, which sends
one no-op task per id and returns the results in the same order, ``one(id)``, one task's
round trip, and ``close()`` — and the benchmark drives it over stdin/stdout, one JSON
object a line:

* ``{"op": "batch", "n": N}`` -> ``{"wall_s", "cpu_s", "error"}``: N tasks end to end,
  timed here (wall clock and this process's CPU), checked after the clock stops;
* ``{"op": "latency", "n": K}`` -> ``{"ms": [...], "error"}``: K single round trips;
* ``{"op": "stop"}`` -> ``{"stopped": true}``, after ``close()``; then the process exits.

The first line it prints is ``{"ready": true, ...}`` once the client is connected.
Whatever the libraries print goes to stderr: this module moves stdout out of their way.
The configuration comes from the environment variable ``BENCH_PEER`` (JSON): at least
``url`` and ``prefix`` (every key, queue and stream the peer makes has the prefix in its
name, so the benchmark can delete them afterwards).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import inspect
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["config", "serve"]


def config() -> dict[str, Any]:
    """The peer's configuration (``BENCH_PEER``, JSON)."""
    loaded: dict[str, Any] = json.loads(os.environ["BENCH_PEER"])
    return loaded


def _protocol_out() -> Any:
    """A private copy of stdout for the protocol; fd 1 then points at stderr."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return out


class _Runner:
    """Runs the peer's functions, sync or async, on one event loop kept for the session."""

    def __init__(self) -> None:
        self._runner = asyncio.Runner()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if inspect.iscoroutinefunction(fn):
            return self._runner.run(fn(*args))
        return fn(*args)

    def close(self) -> None:
        self._runner.close()


def serve(
    setup: Callable[[], Any],
    batch: Callable[[list[int]], Any],
    one: Callable[[int], Any],
    close: Callable[[], Any],
    *,
    dists: tuple[str, ...],
) -> int:
    """Answer the benchmark's requests until ``stop`` (see the module docstring)."""
    out = _protocol_out()
    runner = _Runner()

    def reply(message: dict[str, Any]) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    runner.call(setup)
    versions = {d: importlib.metadata.version(d) for d in dists}
    reply({"ready": True, "versions": versions, "python": sys.version.split()[0]})
    next_id = 0
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "stop":
            runner.call(close)
            runner.close()
            reply({"stopped": True})
            return 0
        n = int(request["n"])
        if op == "batch":
            ids = list(range(next_id, next_id + n))
            next_id += n
            gc.collect()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            error = None
            try:
                results = runner.call(batch, ids)
            except Exception as exc:  # reported to the benchmark, which fails the row
                results, error = None, repr(exc)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            if error is None and list(results) != ids:
                wrong = sum(1 for got, want in zip(results, ids, strict=False) if got != want)
                error = f"{len(results)} results for {n} tasks, {wrong} wrong"
            reply({"wall_s": wall, "cpu_s": cpu, "error": error})
        elif op == "latency":
            samples: list[float] = []
            error = None
            try:
                for _ in range(n):
                    began = time.perf_counter()
                    got = runner.call(one, next_id)
                    samples.append((time.perf_counter() - began) * 1e3)
                    if got != next_id:
                        raise ValueError(f"task {next_id} returned {got!r}")
                    next_id += 1
            except Exception as exc:
                error = repr(exc)
            reply({"ms": samples, "error": error})
        else:
            reply({"error": f"unknown op {op!r}"})
    return 0
