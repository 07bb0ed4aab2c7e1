"""The app a worker serves: ``murmur worker start --app research`` (run from this directory).

Offline by default; ``MURMUR_EXAMPLE_MODEL=openai:gpt-4o`` (on the workers) uses a real model.
"""

from __future__ import annotations

import os

from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from murmur import Agent


async def _offline_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    question = str(messages[-1].parts[-1].content)  # type: ignore[union-attr]
    return ModelResponse(parts=[TextPart(f"notes on {question!r}")])


researcher = Agent(
    name="researcher",
    model=os.environ.get("MURMUR_EXAMPLE_MODEL") or FunctionModel(_offline_model),
    instructions="Research the question; answer with short notes.",
)


async def shout(text: str) -> str:
    """A plain async function is an agent too."""
    return text.upper()
