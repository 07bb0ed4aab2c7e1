"""The app the ``distributed`` scenario's workers serve (``--app benchmarks.distributed_app``).

A worker process imports it once; the caller imports the same agents, by name.
"""

from __future__ import annotations

from pydantic_ai import Agent as PydanticAIAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

__all__ = ["echo_model", "noop"]


async def noop(x: int) -> int:
    """A no-op task: what a task costs the runtime, the broker and the wire, and nothing else."""
    return x


def _reply(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("ok")])


#: A pydantic-ai agent on a FunctionModel that answers at once (no network, no tokens).
echo_model: PydanticAIAgent[None, str] = PydanticAIAgent(FunctionModel(_reply), name="echo_model")
