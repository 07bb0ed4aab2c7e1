"""The product page's research crew, as an app a worker serves: three pydantic-ai agents on
offline models, each answering ``name(prompt)``."""

from __future__ import annotations

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage


def _tagging(tag: str) -> FunctionModel:
    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        prompt = next(
            part.content
            for message in messages
            if isinstance(message, ModelRequest)
            for part in message.parts
            if isinstance(part, UserPromptPart) and isinstance(part.content, str)
        )
        return ModelResponse(
            parts=[TextPart(f"{tag}({prompt})")],
            usage=RequestUsage(input_tokens=10, output_tokens=5),
        )

    return FunctionModel(respond)


researcher = Agent(_tagging("research"), name="researcher")
reviewer = Agent(_tagging("review"), name="reviewer")
summariser = Agent(_tagging("summary"), name="summariser")
