"""The product page's first cookbook section ("Replace asyncio.gather with runtime.gather").

The snippets below are copied verbatim from the page and executed as written (top-level
``await`` included), with ``my_agent`` and ``questions`` supplied by the test.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from murmur import AgentResult, AgentRuntime, from_pydantic_ai
from support import exec_snippet

pytestmark = pytest.mark.anyio

BEFORE = """\
import asyncio


async def call_one(agent_fn, q):
    try:
        return {"ok": True, "result": await agent_fn(q)}
    except Exception as e:
        return {"ok": False, "error": e}


results = await asyncio.gather(
    *(call_one(my_agent, q) for q in questions),
    return_exceptions=False,
)

ok = [r["result"] for r in results if r["ok"]]
failed = [r["error"] for r in results if not r["ok"]]
"""

AFTER = """\
from murmur import AgentRuntime, TaskSpec

runtime = AgentRuntime()

results = await runtime.gather(
    my_agent,
    tasks=[TaskSpec(input=q) for q in questions],
    max_concurrency=20,
)

ok = [r.output for r in results if r.is_ok()]
failed = [r.error for r in results if not r.is_ok()]
"""

QUESTIONS = [f"question {i}" for i in range(30)]
FAILING = {"question 3", "question 17", "question 29"}


def answer(question: str) -> str:
    if question in FAILING:
        raise ValueError(f"cannot answer {question!r}")
    return question.replace("question", "answer")


EXPECTED_OK = [answer(q) for q in QUESTIONS if q not in FAILING]


def check(namespace: dict[str, Any]) -> None:
    results = namespace["results"]
    assert len(results) == len(QUESTIONS)
    assert all(isinstance(r, AgentResult) for r in results)
    assert namespace["ok"] == EXPECTED_OK
    failed = namespace["failed"]
    assert len(failed) == len(FAILING)
    assert all(isinstance(e, ValueError) for e in failed)
    assert [str(e) for e in failed] == [f"cannot answer {q!r}" for q in QUESTIONS if q in FAILING]
    assert isinstance(namespace["runtime"], AgentRuntime)


async def test_cookbook_with_a_function_agent() -> None:
    async def my_agent(q: str) -> str:
        await anyio.lowlevel.checkpoint()
        return answer(q)

    namespace = await exec_snippet(AFTER, {"my_agent": my_agent, "questions": QUESTIONS})
    try:
        check(namespace)
    finally:
        await namespace["runtime"].aclose()


async def test_cookbook_with_a_from_pydantic_ai_function_model_agent() -> None:
    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        (request,) = messages
        assert isinstance(request, ModelRequest)
        (part,) = [p for p in request.parts if isinstance(p, UserPromptPart)]
        assert isinstance(part.content, str)
        return ModelResponse(parts=[TextPart(answer(part.content))])

    my_agent = from_pydantic_ai(PydanticAgent(FunctionModel(model_fn), name="answerer"))
    namespace = await exec_snippet(AFTER, {"my_agent": my_agent, "questions": QUESTIONS})
    try:
        check(namespace)
        assert {r.agent for r in namespace["results"]} == {"answerer"}
        assert all(r.usage.requests == 1 for r in namespace["results"] if r.is_ok())
    finally:
        await namespace["runtime"].aclose()


async def test_cookbook_max_concurrency_caps_the_fan_out() -> None:
    """``max_concurrency=20`` in the snippet really caps calls in flight at 20."""
    active = 0
    peak = 0
    reached = anyio.Event()
    release = anyio.Event()

    async def my_agent(q: str) -> str:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        if active == 20:
            reached.set()
        try:
            await release.wait()
        finally:
            active -= 1
        return answer(q)

    namespace: dict[str, Any] = {"my_agent": my_agent, "questions": QUESTIONS}
    async with anyio.create_task_group() as tg:
        tg.start_soon(exec_snippet, AFTER, namespace)
        await reached.wait()
        await anyio.wait_all_tasks_blocked()
        assert active == 20
        release.set()
    try:
        check(namespace)
        assert peak == 20
    finally:
        await namespace["runtime"].aclose()


def test_cookbook_after_matches_before(anyio_backend: str) -> None:
    """The migration keeps the partial-failure split the hand-rolled version produced."""

    async def my_agent(q: str) -> str:
        await anyio.lowlevel.checkpoint()
        return answer(q)

    threads_before = [t for t in threading.enumerate() if t.name.startswith("murmur-")]
    # "Before" is asyncio-only by construction (it calls asyncio.gather).
    before = asyncio.run(exec_snippet(BEFORE, {"my_agent": my_agent, "questions": QUESTIONS}))

    async def after_snippet() -> dict[str, Any]:
        namespace = await exec_snippet(AFTER, {"my_agent": my_agent, "questions": QUESTIONS})
        await namespace["runtime"].aclose()
        return namespace

    after = anyio.run(after_snippet, backend=anyio_backend)
    assert after["ok"] == before["ok"] == EXPECTED_OK
    assert [(type(e), str(e)) for e in after["failed"]] == [
        (type(e), str(e)) for e in before["failed"]
    ]
    threads_after = [t for t in threading.enumerate() if t.name.startswith("murmur-")]
    assert threads_after == threads_before
