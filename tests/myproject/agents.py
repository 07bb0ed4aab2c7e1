"""``myproject.agents``: the app the docs' workers serve (``murmur worker start --app
myproject.agents``), with the agents the docs' prose names, answering offline."""

from __future__ import annotations


async def researcher(question: str) -> str:
    return f"research({question})"


async def reviewer(finding: str) -> str:
    return f"review({finding})"


async def summariser(review: str) -> str:
    return f"summary({review})"
