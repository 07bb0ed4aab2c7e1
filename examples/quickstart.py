"""Quickstart: one murmur.Agent, a batch of tasks, one result per task.

    python examples/quickstart.py                # asyncio, offline model
    python examples/quickstart.py --backend trio
    MURMUR_EXAMPLE_MODEL=openai:gpt-4o python examples/quickstart.py   # a real model
                                                 # (pip install 'murmur-agents[openai]')

Offline, the model is a pydantic-ai FunctionModel that labels a review by its words.
"""

from __future__ import annotations

import os
import sys

import anyio
from pydantic import BaseModel
from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from murmur import Agent, AgentRuntime, TaskSpec


class Verdict(BaseModel):
    sentiment: str
    confidence: float


async def offline_reviewer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Answer like a model would: call the output tool with a Verdict."""
    prompt = str(messages[-1].parts[-1].content)  # type: ignore[union-attr]
    positive = any(word in prompt.lower() for word in ("loved", "great", "again!"))
    verdict = {"sentiment": "positive" if positive else "negative", "confidence": 0.9}
    return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, verdict)])


reviewer = Agent(
    name="reviewer",
    model=os.environ.get("MURMUR_EXAMPLE_MODEL") or FunctionModel(offline_reviewer),
    instructions="Classify the sentiment of the review.",
    output_type=Verdict,
)

REVIEWS = ["Loved it.", "Never again.", "Great battery, would buy again!"]


async def main() -> None:
    async with AgentRuntime() as runtime:
        results = await runtime.gather(
            reviewer,
            [TaskSpec(input=text, task_id=f"review-{i}") for i, text in enumerate(REVIEWS)],
            max_concurrency=20,
        )
    for result in results:
        if result.is_ok():
            print(result.task_id, result.output.sentiment, f"{result.usage.total_tokens} tokens")
        else:
            print(result.task_id, "failed:", type(result.error).__name__, result.error)


if __name__ == "__main__":
    backend = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "asyncio"
    anyio.run(main, backend=backend)
