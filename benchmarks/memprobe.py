"""Peak memory of one batch, measured in a fresh process.

``python -m benchmarks.memprobe '{"impl": "murmur", "backend": "asyncio", "n": 100000,
"cap": 100, "mode": "rss"}'`` prints one JSON object. ``mode`` is ``rss`` (resident set
size: the process's peak during the batch, above its size just before) or
``tracemalloc`` (Python allocations: the size of the inputs/specs, and the peak above
them during the batch). Each mode runs in its own process: tracemalloc's bookkeeping
would inflate the RSS.

On Linux the RSS peak is the kernel's ``VmHWM``, reset just before the batch through
``/proc/self/clear_refs``. (``ru_maxrss`` is no use here: across ``exec`` it keeps the
high-water mark of the forked parent, i.e. of the benchmark process.) Elsewhere it falls
back to ``ru_maxrss``, which then includes everything before the batch.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
import tracemalloc
from typing import Any

from .harness import REPO_ROOT, quiet_logging
from .workloads import IMPL_MURMUR, contender, get_workload, make_inputs, make_specs

__all__ = ["probe", "probe_in_subprocess"]


def _proc_status() -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


def _rss_kb() -> int:
    status = _proc_status()
    if "VmRSS" in status:
        return status["VmRSS"]
    return _maxrss_kb()


def _peak_rss_kb() -> int:
    status = _proc_status()
    if "VmHWM" in status:
        return status["VmHWM"]
    return _maxrss_kb()


def _maxrss_kb() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def probe(impl: str, backend: str, n: int, cap: int, mode: str) -> dict[str, Any]:
    """Measure one batch in this process (call it in a fresh one)."""
    workload = get_workload("noop")
    # Warm up in a small batch first: imports and lazy initialisation are not the batch's.
    contender(impl, backend, workload, make_inputs(10), cap).run()
    gc.collect()
    out: dict[str, Any] = {"impl": impl, "backend": backend, "n": n, "cap": cap, "mode": mode}
    if mode == "tracemalloc":
        tracemalloc.start()
        before_inputs = tracemalloc.get_traced_memory()[0]
    rss_start = _rss_kb()
    inputs = make_inputs(n)
    specs = make_specs(inputs) if impl == IMPL_MURMUR else None
    item = contender(impl, backend, workload, inputs, cap, specs)
    gc.collect()
    rss_before = _rss_kb()
    out["peak_reset"] = _reset_peak_rss() if mode == "rss" else None
    if mode == "tracemalloc":
        current = tracemalloc.get_traced_memory()[0]
        out["inputs_bytes"] = current - before_inputs
        tracemalloc.reset_peak()
    started = time.perf_counter()
    item.run()
    out["wall_s"] = time.perf_counter() - started
    if mode == "tracemalloc":
        peak = tracemalloc.get_traced_memory()[1]
        out["batch_peak_bytes"] = peak - current
        tracemalloc.stop()
    else:
        out["rss_start_kb"] = rss_start
        out["rss_before_batch_kb"] = rss_before
        out["rss_peak_kb"] = _peak_rss_kb()
        out["rss_after_kb"] = _rss_kb()
    return out


def probe_in_subprocess(
    impl: str, backend: str, n: int, cap: int, mode: str, timeout: float = 600
) -> dict[str, Any]:
    """Run :func:`probe` in a fresh interpreter of this virtualenv; return its JSON."""
    spec = json.dumps({"impl": impl, "backend": backend, "n": n, "cap": cap, "mode": mode})
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.memprobe", spec],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memprobe failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str]) -> int:
    quiet_logging()
    spec = json.loads(argv[0])
    result = probe(spec["impl"], spec["backend"], spec["n"], spec["cap"], spec["mode"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
