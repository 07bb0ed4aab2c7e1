"""One runtime of a fleet sharing a Redis rate limit: ``python ratelimit_fleet_app.py NAME
RPM PERIOD TASKS BACKEND OUT``. It waits for a start file (so every process starts its
traffic together), runs TASKS calls through a pydantic-ai agent on a FunctionModel whose
model string is ``function:fleet``, and writes the time (``time.time()``) of every request
the model received to OUT, one a line."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from murmur import AgentRuntime, RateLimit, RuntimeOptions, TaskSpec

REDIS_URL = "redis://127.0.0.1:6379"


def main() -> None:
    name, rpm, period, tasks, backend, out = sys.argv[1:7]
    seen: list[float] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(time.time())
        return ModelResponse(parts=[TextPart("ok")])

    agent = PydanticAgent(FunctionModel(model, model_name="fleet"), name="fleet")
    limit = RateLimit(
        model="function:fleet", rpm=int(rpm), period=float(period), store=REDIS_URL, name=name
    )
    start = Path(out + ".go")

    async def run() -> None:
        async with AgentRuntime(options=RuntimeOptions(rate_limits=[limit])) as runtime:
            Path(out + ".ready").write_text("1")
            while not start.exists():
                await anyio.sleep(0.01)  # waiting for the test's go, not synchronising work
            results = await runtime.gather(agent, [TaskSpec(input="hi") for _ in range(int(tasks))])
            assert all(r.is_ok() for r in results), [r.error for r in results if r.error]

    anyio.run(run, backend=backend)
    Path(out).write_text("".join(f"{t!r}\n" for t in seen))


if __name__ == "__main__":
    main()
