"""Fan-out with partial failures: 20 tasks, a hard cap of 5 in flight, failures as data.

    python examples/fan_out.py [--backend trio]

Every task comes back as exactly one AgentResult, in input order; the failed ones carry
their exception in ``result.error`` and the batch goes on.
"""

from __future__ import annotations

import sys
from collections import Counter

import anyio

from murmur import AgentContext, AgentRuntime, TaskSpec

in_flight = 0
peak = 0


async def enrich(record_id: int, ctx: AgentContext) -> str:
    """Enrich one record; records 7 and 14 fail, 3 has bad data."""
    global in_flight, peak
    in_flight += 1
    peak = max(peak, in_flight)
    try:
        await anyio.sleep(0.01)  # a model call would await here
        if record_id in (7, 14):
            raise ConnectionError(f"provider reset the connection for record {record_id}")
        if record_id == 3:
            raise ValueError("record 3 has no name")
        ctx.report_usage(input_tokens=100, output_tokens=20, requests=1)
        return f"record {record_id}: enriched"
    finally:
        in_flight -= 1


async def main() -> None:
    async with AgentRuntime() as runtime:
        results = await runtime.gather(
            enrich, [TaskSpec(input=i, task_id=f"rec-{i}") for i in range(20)], max_concurrency=5
        )
    ok = [r for r in results if r.is_ok()]
    failed = [r for r in results if not r.is_ok()]
    print(f"{len(results)} results, {len(ok)} ok, {len(failed)} failed, peak in flight {peak}")
    for r in failed:
        print(f"  {r.task_id}: {type(r.error).__name__}: {r.error}")
    kinds = Counter(type(r.error).__name__ for r in failed)
    print("failures by type:", dict(sorted(kinds.items())))
    print("tokens:", sum(r.usage.total_tokens for r in results))
    assert [r.task_id for r in results] == [f"rec-{i}" for i in range(20)]  # input order


if __name__ == "__main__":
    backend = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "asyncio"
    anyio.run(main, backend=backend)
