"""Retry, per-attempt timeout and a shared token budget, set once on the runtime.

python examples/policies.py [--backend trio]
"""

from __future__ import annotations

import sys

import anyio

from murmur import AgentContext, AgentRuntime, RuntimeOptions, TaskSpec, TokenBudget

attempts_seen: dict[str, int] = {}


async def flaky(question: str, ctx: AgentContext) -> str:
    """Fails twice with a transient error, then answers: retried by default."""
    attempts_seen[question] = ctx.attempt
    if ctx.attempt < 3:
        raise ConnectionError("connection reset")
    return question.upper()


async def stuck(question: str) -> str:
    """Never answers: each attempt ends at its deadline."""
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def costly(question: str, ctx: AgentContext) -> str:
    """Spends 400 tokens per call."""
    ctx.report_usage(input_tokens=300, output_tokens=100, requests=1)
    return f"answer({question})"


async def main() -> None:
    retrying = RuntimeOptions(retry_max_attempts=3, retry_initial_delay=0.01)
    async with AgentRuntime(options=retrying) as runtime:
        result = await runtime.run(flaky, TaskSpec(input="hello"))
    print("retry:", result.output, "after", result.attempts, "attempts")

    timing_out = RuntimeOptions(timeout_seconds=0.05, retry_max_attempts=2, retry_initial_delay=0)
    async with AgentRuntime(options=timing_out) as runtime:
        result = await runtime.run(stuck, TaskSpec(input="anyone?"))
    print("timeout:", type(result.error).__name__, "after", result.attempts, "attempts")

    budget = TokenBudget(limit=1_000, reserve_per_task=400)
    async with AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime:
        results = await runtime.gather(
            costly, [TaskSpec(input=f"q{i}") for i in range(5)], max_concurrency=1
        )
    outcomes = [r.output if r.is_ok() else type(r.error).__name__ for r in results]
    print("budget:", outcomes)
    print(f"budget used {budget.used} of {budget.limit}, exhausted={budget.exhausted}")


if __name__ == "__main__":
    backend = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "asyncio"
    anyio.run(main, backend=backend)
