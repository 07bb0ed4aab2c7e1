"""One runtime of a fleet sharing a Redis token budget: ``python budget_fleet_app.py NAME
LIMIT RESERVE PER_RESPONSE TASKS BACKEND OUT``. It waits for a start file (so every process
starts its traffic together), runs TASKS pydantic-ai runs on a FunctionModel whose every
response costs PER_RESPONSE tokens and that calls a tool until cut off, under
``TokenBudget(limit=LIMIT, reserve_per_task=RESERVE, store=...)``, and writes to OUT, as
JSON, the tokens each task spent and how many were refused.

With TASKS = 0 it holds instead: one task reserves and waits forever (the test kills the
process, leaving its reservation behind), after writing OUT.ready."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from murmur import AgentRuntime, BudgetExceededError, RuntimeOptions, TaskSpec, TokenBudget

REDIS_URL = "redis://127.0.0.1:6379"


def main() -> None:
    name, limit, reserve, per_response, tasks, backend, out = sys.argv[1:8]

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        await anyio.sleep(0.001)  # a model's latency, so that runs overlap
        usage = RequestUsage(input_tokens=int(per_response))
        return ModelResponse(parts=[ToolCallPart("step", {})], usage=usage)

    agent = PydanticAgent(FunctionModel(model, model_name="fleet"), name="fleet")

    @agent.tool_plain
    def step() -> str:
        return "again"

    budget = TokenBudget(
        limit=int(limit), reserve_per_task=int(reserve), store=REDIS_URL, name=name
    )
    ready, start = Path(out + ".ready"), Path(out + ".go")

    async def hold(value: str) -> str:
        ready.write_text("1")
        await anyio.sleep_forever()
        return value

    async def run() -> None:
        async with AgentRuntime(options=RuntimeOptions(token_budget=budget)) as runtime:
            if int(tasks) == 0:
                await runtime.run(hold, TaskSpec(input="hold"))
                return
            ready.write_text("1")
            while not start.exists():
                await anyio.sleep(0.01)  # waiting for the test's go, not synchronising work
            results = await runtime.gather(agent, [TaskSpec(input="go") for _ in range(int(tasks))])
        assert all(isinstance(r.error, BudgetExceededError) for r in results), [
            r.error for r in results if not isinstance(r.error, BudgetExceededError)
        ]
        spent = [r.usage.total_tokens for r in results]
        refused = sum(r.attempts == 0 for r in results)
        Path(out).write_text(json.dumps({"spent": spent, "refused": refused}))

    anyio.run(run, backend=backend)


if __name__ == "__main__":
    main()
