"""The product page's "After" snippets, executed as written, on asyncio and on Trio.

Complements the seed tests that already exist, without repeating them:

- ``tests/test_seed.py`` runs the gather section with function agents and ``from_pydantic_ai``
  (results, order, the cap of 20, same split as the "Before" code). Here: the same snippet
  with a fresh ``murmur.Agent`` and with a raw ``pydantic_ai.Agent``.
- ``tests/middleware/test_seed_policies.py`` runs the retry and budget sections with a fake
  clock and structlog capture. Here: the retry section through public API only (its options
  checked field by field, the same pipeline run without backoff waits), and the budget
  section's typed ``RuntimeEvent`` order with a recording emitter.
- ``tests/groups/test_group_research.py`` copies the research pipeline into test code. Here:
  the snippet's exact text (alignment included) is executed, with function, ``murmur.Agent``
  and ``from_pydantic_ai`` nodes.

Also: adoption steps 1 (wrap one agent) and 5 (``MultiEventEmitter([LogEventEmitter(),
SSEEventEmitter()])``), the table's depth row with its events, and "Going distributed", which
is not implemented yet: its constructor must refuse clearly.

Agents are offline: pydantic-ai ``FunctionModel`` / ``TestModel`` agents and plain async
functions. Nothing here sleeps or measures time.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.usage import RequestUsage
from structlog.testing import capture_logs

import murmur
from murmur import (
    AgentContext,
    AgentGroup,
    AgentResult,
    AgentRuntime,
    BudgetExceededError,
    EventType,
    GroupResult,
    LogEventEmitter,
    RuntimeOptions,
    SpawnDepthExceededError,
    SSEEventEmitter,
    TaskSpec,
    TokenBudget,
    from_pydantic_ai,
)
from support import Recorder, exec_snippet

pytestmark = pytest.mark.anyio


# -- the page's snippets, verbatim (except where a comment says otherwise) ---------------------

GATHER_AFTER = """\
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

RETRY_AFTER = """\
from murmur import AgentRuntime, RuntimeOptions

runtime = AgentRuntime(
    options=RuntimeOptions(
        timeout_seconds=60.0,
        retry_max_attempts=3,
        retry_backoff_factor=1.5,
    ),
)

result = await runtime.run(my_agent, TaskSpec(input=question))
"""

# The page's backoff of 1.5 waits 1.5 ** 0 = 1 s of real time before the second attempt. To
# keep the suite fast, the tests run the snippet with this one knob set to 0 (no wait) and
# check separately that the page's own options are exactly these, bar that knob.
RETRY_AFTER_NO_WAIT = RETRY_AFTER.replace(
    "retry_backoff_factor=1.5,", "retry_backoff_factor=0,  # page: 1.5"
)
assert RETRY_AFTER_NO_WAIT.count("retry_backoff_factor=0,") == 1

BUDGET_AFTER = """\
from murmur import AgentRuntime, RuntimeOptions
from murmur.middleware.cost_tracking import TokenBudget

runtime = AgentRuntime(
    options=RuntimeOptions(token_budget=TokenBudget(limit=TOKEN_LIMIT)),
)

# CostTrackingMiddleware does pre-check (raises BudgetExceededError) +
# post-charge (deducts from the budget) automatically. A BUDGET_EXCEEDED
# RuntimeEvent fires before the error is raised.
"""

GROUP_BEFORE = """\
async def research_pipeline(question):
    finding = await researcher(question)
    review = await reviewer(finding)
    summary = await summariser(review)
    return summary
"""

GROUP_AFTER = """\
from murmur import AgentGroup, Edge

crew = AgentGroup(
    name="research",
    topology={
        researcher: Edge(to=(reviewer,)),
        reviewer:   Edge(to=(summariser,)),
        summariser: Edge.terminal(),
    },
)

result = await runtime.run_group(crew, TaskSpec(input=question))
"""

# Adoption step 5. The page writes `SSEEventEmitter(...)`; it needs no arguments.
EMITTERS_AFTER = """\
from murmur import AgentRuntime, LogEventEmitter, MultiEventEmitter, SSEEventEmitter

emitter = MultiEventEmitter([LogEventEmitter(), SSEEventEmitter()])
runtime = AgentRuntime(event_emitter=emitter)
"""

DISTRIBUTED = """\
runtime = AgentRuntime(broker="kafka://kafka.prod:9092")
"""


# -- helpers -----------------------------------------------------------------------------------


def prompt_of(messages: list[ModelMessage]) -> str:
    """The user prompt of the request a FunctionModel received."""
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return part.content
    raise AssertionError("no user prompt")


def answering_model(
    answer: Any, *, tokens: int | None = None, calls: list[str] | None = None
) -> FunctionModel:
    """A FunctionModel that answers ``answer(prompt)`` (which may raise)."""

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        prompt = prompt_of(messages)
        if calls is not None:
            calls.append(prompt)
        response = ModelResponse(parts=[TextPart(answer(prompt))])
        if tokens is not None:
            response.usage = RequestUsage(input_tokens=tokens - 10, output_tokens=10)
        return response

    return FunctionModel(respond)


# -- adoption step 1: wrap one agent, run it against a single task ------------------------------


@pytest.mark.parametrize("wrap", ["from_pydantic_ai", "murmur.Agent"])
@pytest.mark.parametrize("model_kind", ["TestModel", "FunctionModel"])
async def test_step1_wrap_one_agent_and_run_one_task(wrap: str, model_kind: str) -> None:
    model: Any
    if model_kind == "TestModel":
        model = TestModel(custom_output_text="an answer")
    else:
        model = answering_model(lambda prompt: "an answer")
    agent: Any
    if wrap == "from_pydantic_ai":
        existing = PydanticAgent(model, instructions="Answer briefly.")  # what you already have
        agent = from_pydantic_ai(existing, name="answerer")
    else:
        agent = murmur.Agent(name="answerer", model=model, instructions="Answer briefly.")

    async with AgentRuntime() as runtime:
        result = await runtime.run(agent, TaskSpec(input="what is murmur?", task_id="t-1"))

    assert isinstance(result, AgentResult)
    assert result.is_ok(), result.error
    assert result.unwrap() == "an answer"
    assert (result.agent, result.task_id, result.attempts) == ("answerer", "t-1", 1)
    assert result.usage.requests == 1
    assert result.usage.total_tokens > 0


# -- "Replace asyncio.gather with runtime.gather", with the agent kinds test_seed.py leaves out --

QUESTIONS = [f"question {i}" for i in range(25)]
FAILING = {"question 4", "question 20"}


def answer(question: str) -> str:
    if question in FAILING:
        raise ValueError(f"cannot answer {question!r}")
    return question.replace("question", "answer")


@pytest.mark.parametrize("kind", ["murmur.Agent", "pydantic_ai.Agent"])
async def test_gather_snippet_with_murmur_and_raw_pydantic_ai_agents(kind: str) -> None:
    model = answering_model(answer)
    my_agent: Any
    if kind == "murmur.Agent":
        my_agent = murmur.Agent(name="answerer", model=model, instructions="Answer briefly.")
    else:
        my_agent = PydanticAgent(model, name="answerer")
    namespace = await exec_snippet(GATHER_AFTER, {"my_agent": my_agent, "questions": QUESTIONS})
    await namespace["runtime"].aclose()

    results = namespace["results"]
    assert [r.agent for r in results] == ["answerer"] * len(QUESTIONS)
    assert namespace["ok"] == [answer(q) for q in QUESTIONS if q not in FAILING]
    assert [str(e) for e in namespace["failed"]] == [
        f"cannot answer {q!r}" for q in QUESTIONS if q in FAILING
    ]
    assert all(isinstance(e, ValueError) for e in namespace["failed"])
    assert all(r.usage.requests == 1 for r in results if r.is_ok())


# -- "Replace retry / timeout boilerplate with middleware" ------------------------------------


async def test_retry_snippet_options_are_the_tested_ones_but_for_the_backoff() -> None:
    """The page's options, field by field, are what the tests below run, backoff aside."""
    page = RuntimeOptions(timeout_seconds=60.0, retry_max_attempts=3, retry_backoff_factor=1.5)
    tested = RuntimeOptions(timeout_seconds=60.0, retry_max_attempts=3, retry_backoff_factor=0)
    assert page.model_copy(update={"retry_backoff_factor": 0.0}) == tested
    assert page.timeout_seconds == tested.timeout_seconds == 60.0
    assert page.retry_max_attempts == tested.retry_max_attempts == 3
    assert page.retry_backoff_factor == 1.5
    assert tested.retry_backoff_factor == 0
    # Everything the snippet leaves alone keeps its default in both.
    defaults = RuntimeOptions()
    for field in RuntimeOptions.model_fields:
        if field not in {"timeout_seconds", "retry_max_attempts", "retry_backoff_factor"}:
            assert getattr(page, field) == getattr(tested, field) == getattr(defaults, field)


@pytest.mark.parametrize("kind", ["from_pydantic_ai", "murmur.Agent", "function"])
async def test_retry_snippet_retries_a_connection_error_once(kind: str) -> None:
    calls: list[str] = []

    def fail_once(prompt: str) -> str:
        if len(calls) == 1:
            raise ConnectionError("connection reset by peer")
        return f"answer to {prompt}"

    my_agent: Any
    if kind == "from_pydantic_ai":
        model = answering_model(fail_once, calls=calls)
        my_agent = from_pydantic_ai(PydanticAgent(model), name="my_agent")
    elif kind == "murmur.Agent":
        my_agent = murmur.Agent(name="my_agent", model=answering_model(fail_once, calls=calls))
    else:

        async def my_agent(question: str) -> str:
            calls.append(question)
            await anyio.lowlevel.checkpoint()
            return fail_once(question)

    namespace: dict[str, Any] = {
        "my_agent": my_agent,
        "question": "what is murmur?",
        "TaskSpec": TaskSpec,  # imported by the page's earlier section
    }
    with capture_logs() as logs:
        await exec_snippet(RETRY_AFTER_NO_WAIT, namespace)
    runtime = namespace["runtime"]
    await runtime.aclose()

    assert runtime.options == RuntimeOptions(
        timeout_seconds=60.0, retry_max_attempts=3, retry_backoff_factor=0
    )
    result = namespace["result"]
    assert result.is_ok(), result.error
    assert result.output == "answer to what is murmur?"
    assert result.attempts == 2
    assert calls == ["what is murmur?"] * 2
    # The default LogEventEmitter reported the retry, with no wait.
    (retry,) = [entry for entry in logs if entry["event"] == "task.retry_scheduled"]
    assert retry["data"] == {"delay": 0.0, "next_attempt": 2}
    assert retry["error"] == {"type": "ConnectionError", "message": "connection reset by peer"}
    assert not [entry for entry in logs if entry["event"] == "task.failed"]


# -- "Replace global token bookkeeping with TokenBudget" --------------------------------------


async def test_budget_snippet_budget_exceeded_event_comes_before_the_error() -> None:
    """The snippet's options, with a recording emitter: typed events, in order."""
    namespace = await exec_snippet(BUDGET_AFTER, {"TOKEN_LIMIT": 300})
    await namespace["runtime"].aclose()
    options = namespace["runtime"].options
    budget = options.token_budget
    assert isinstance(budget, TokenBudget)
    assert budget.limit == 300
    assert namespace["TokenBudget"] is TokenBudget  # the page's import path is the public one

    recorder = Recorder()
    my_agent = murmur.Agent(name="costly", model=answering_model(str.upper, tokens=100))
    tasks = [TaskSpec(input=f"q{i}", task_id=f"t{i}") for i in range(5)]
    async with AgentRuntime(options=options, event_emitter=recorder) as runtime:
        results = await runtime.gather(my_agent, tasks, max_concurrency=5)

    # Which three tasks get the budget depends on scheduling (waiting tasks are woken
    # together); that three do, and two are refused, does not.
    done = [r for r in results if r.is_ok()]
    refused = [r for r in results if not r.is_ok()]
    assert len(done) == 3
    assert all(r.output == str(r.task_id).replace("t", "Q") for r in done)
    assert all(isinstance(r.error, BudgetExceededError) for r in refused)
    assert all(r.attempts == 0 for r in refused)  # the pre-check refused them
    assert (budget.used, budget.reserved, budget.remaining) == (300, 0, 0)  # post-charged

    exceeded = recorder.of(EventType.BUDGET_EXCEEDED)
    assert sorted(e.task_id or "" for e in exceeded) == sorted(r.task_id for r in refused)
    assert all(e.data == {"limit": 300, "used": 300, "reserved": 0} for e in exceeded)
    for event in exceeded:
        position = recorder.events.index(event)
        (failed,) = [
            i
            for i, e in enumerate(recorder.events)
            if e.type is EventType.TASK_FAILED and e.task_id == event.task_id
        ]
        assert position < failed
        error = recorder.events[failed].error
        assert error is not None
        assert error.type == "BudgetExceededError"


# -- "Replace ad-hoc DAG runners with AgentGroup" ---------------------------------------------


def research_nodes(kind: str, prompts: list[str]) -> tuple[Any, Any, Any]:
    """researcher → reviewer → summariser, each wrapping its input in its tag."""
    if kind == "function":

        async def researcher(question: str) -> str:
            prompts.append(question)
            return f"finding({question})"

        async def reviewer(finding: str) -> str:
            prompts.append(finding)
            return f"review({finding})"

        async def summariser(review: str) -> str:
            prompts.append(review)
            return f"summary({review})"

        return researcher, reviewer, summariser

    def model(tag: str) -> FunctionModel:
        return answering_model(lambda prompt: f"{tag}({prompt})", calls=prompts)

    if kind == "murmur.Agent":
        return (
            murmur.Agent(name="researcher", model=model("finding")),
            murmur.Agent(name="reviewer", model=model("review")),
            murmur.Agent(name="summariser", model=model("summary")),
        )
    return (
        from_pydantic_ai(PydanticAgent(model("finding"), name="researcher")),
        from_pydantic_ai(PydanticAgent(model("review"), name="reviewer")),
        from_pydantic_ai(PydanticAgent(model("summary"), name="summariser")),
    )


@pytest.mark.parametrize("kind", ["function", "murmur.Agent", "from_pydantic_ai"])
async def test_group_snippet_as_written(kind: str) -> None:
    prompts: list[str] = []
    researcher, reviewer, summariser = research_nodes(kind, prompts)
    recorder = Recorder()
    async with AgentRuntime(event_emitter=recorder) as runtime:
        namespace = await exec_snippet(
            GROUP_AFTER,
            {
                "researcher": researcher,
                "reviewer": reviewer,
                "summariser": summariser,
                "runtime": runtime,
                "question": "q",
                "TaskSpec": TaskSpec,  # imported by the page's earlier section
            },
        )
    result = namespace["result"]
    assert isinstance(namespace["crew"], AgentGroup)
    assert isinstance(result, GroupResult)
    assert result.is_ok(), result.error
    assert result.output == "summary(review(finding(q)))"
    assert prompts == ["q", "finding(q)", "review(finding(q))"]
    assert list(result.results) == ["researcher", "reviewer", "summariser"]
    assert result.status == dict.fromkeys(result.results, "succeeded")

    # "The same observability as the single-agent path": task events for every node, group
    # events around them, one trace.
    kinds = [e.type for e in recorder.events]
    assert kinds[0] is EventType.GROUP_STARTED
    assert kinds[-1] is EventType.GROUP_COMPLETED
    assert [e.agent for e in recorder.of(EventType.TASK_SUCCEEDED)] == [
        "researcher",
        "reviewer",
        "summariser",
    ]
    assert len({e.trace_id for e in recorder.events}) == 1


async def test_group_snippet_gives_what_the_before_pipeline_gave() -> None:
    before_prompts: list[str] = []
    researcher, reviewer, summariser = research_nodes("function", before_prompts)
    before = await exec_snippet(
        GROUP_BEFORE,
        {"researcher": researcher, "reviewer": reviewer, "summariser": summariser},
    )
    expected = await before["research_pipeline"]("q")

    after_prompts: list[str] = []
    researcher, reviewer, summariser = research_nodes("function", after_prompts)
    async with AgentRuntime() as runtime:
        after = await exec_snippet(
            GROUP_AFTER,
            {
                "researcher": researcher,
                "reviewer": reviewer,
                "summariser": summariser,
                "runtime": runtime,
                "question": "q",
                "TaskSpec": TaskSpec,
            },
        )
    assert after["result"].output == expected == "summary(review(finding(q)))"
    assert after_prompts == before_prompts


# -- the table's "Don't recurse beyond N levels" row ------------------------------------------


@pytest.mark.parametrize("limit", [0, 1, 3])
async def test_max_spawn_depth_stops_recursion_through_ctx_run(limit: int) -> None:
    reached: list[int] = []
    refusals: list[AgentResult[Any]] = []

    async def recurse(level: int, ctx: AgentContext) -> int:
        assert ctx.depth == level
        reached.append(ctx.depth)
        child = await ctx.run(recurse, TaskSpec(input=level + 1, task_id=f"level-{level + 1}"))
        if isinstance(child.error, SpawnDepthExceededError):
            refusals.append(child)
            return level
        return int(child.unwrap())

    recorder = Recorder()
    options = RuntimeOptions(max_spawn_depth=limit)
    async with AgentRuntime(options=options, event_emitter=recorder) as runtime:
        result = await runtime.run(recurse, TaskSpec(input=0, task_id="level-0"))

    assert result.output == limit  # the deepest level that ran
    assert reached == list(range(limit + 1))
    (refused,) = refusals
    assert refused.attempts == 0  # refused before any attempt
    assert refused.task_id == f"level-{limit + 1}"
    assert str(refused.error) == (
        f"agent 'recurse' at spawn depth {limit + 1} exceeds max_spawn_depth={limit}"
    )
    (event,) = recorder.of(EventType.DEPTH_LIMIT_EXCEEDED)
    assert (event.task_id, event.depth, event.data) == (
        f"level-{limit + 1}",
        limit + 1,
        {"max_spawn_depth": limit},
    )
    (failed,) = recorder.of(EventType.TASK_FAILED)
    assert failed.task_id == event.task_id
    assert recorder.events.index(event) < recorder.events.index(failed)


# -- adoption step 5: MultiEventEmitter([LogEventEmitter(), SSEEventEmitter()]) ---------------


async def test_step5_log_and_sse_emitters_both_see_the_run() -> None:
    namespace = await exec_snippet(EMITTERS_AFTER, {})
    emitter, runtime = namespace["emitter"], namespace["runtime"]
    log, sse = emitter.emitters
    assert isinstance(log, LogEventEmitter)
    assert isinstance(sse, SSEEventEmitter)

    async def my_agent(q: str) -> str:
        await anyio.lowlevel.checkpoint()
        return answer(q)

    questions = ["question 1", "question 4", "question 7"]  # "question 4" fails
    subscription = sse.subscribe()
    async with runtime:
        with capture_logs() as logs:
            results = await runtime.gather(
                my_agent, [TaskSpec(input=q, task_id=q) for q in questions]
            )
    sse.close()  # ends the stream after the events already queued
    streamed = [event async for event in subscription]

    assert [r.is_ok() for r in results] == [True, False, True]
    # SSE wants everything: the whole lifecycle, in order, with ids 1..n.
    kinds = [e.type for e in streamed]
    assert kinds[0] is EventType.BATCH_STARTED
    assert kinds[-1] is EventType.BATCH_COMPLETED
    assert kinds.count(EventType.TASK_STARTED) == 3
    assert kinds.count(EventType.TASK_SUCCEEDED) == 2
    (failed,) = [e for e in streamed if e.type is EventType.TASK_FAILED]
    assert failed.task_id == "question 4"
    assert failed.error is not None
    assert failed.error.type == "ValueError"
    assert sse.last_event_id == len(streamed)
    # The log emitter, at its default level (info), logged the batch and the failure only.
    assert [entry["event"] for entry in logs] == ["batch.started", "task.failed", "batch.completed"]
    assert logs[1]["task_id"] == "question 4"


# -- "Going distributed": the constructor only (a worker round trip is tests/distributed) --------


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379",
        "rediss://localhost:6380",
        "nats://localhost:4222",
        "tls://localhost:4222",
        "amqp://localhost:5672",
        "amqps://localhost:5671",
        DISTRIBUTED.split('"')[1],  # the page's kafka://kafka.prod:9092 (no such host here)
        "memory://",
    ],
)
async def test_broker_mode_constructs_without_connecting(url: str) -> None:
    # Construction checks the URL and the installed extra; the connection opens at first use.
    runtime = AgentRuntime(broker=url)
    transport = runtime.__murmur_host__().transport  # type: ignore[attr-defined]
    assert transport.url.redacted == url
    assert transport._adapter is None  # nothing connected
    await runtime.aclose()
