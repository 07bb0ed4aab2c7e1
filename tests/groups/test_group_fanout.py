"""FanOut: one task per item, bounded concurrency, item order, failed slots, both spellings.

Concurrency is measured with counters and anyio Events, never with sleeps.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import anyio
import pytest
from pydantic import BaseModel
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import murmur
from murmur import (
    AgentContext,
    AgentGroup,
    AgentRuntime,
    Edge,
    FanOut,
    TaskCancelledError,
    TaskSpec,
    Usage,
)

pytestmark = pytest.mark.anyio

HANG_GUARD = 10  # seconds; a hang guard only, no timing is asserted


class SubQuestion(BaseModel):
    text: str


class Plan(BaseModel):
    topic: str
    questions: FanOut[list[SubQuestion]]


class AnnotatedPlan(BaseModel):
    topic: str
    questions: Annotated[list[SubQuestion], FanOut]


class TwoFanOuts(BaseModel):
    left: FanOut[list[int]]
    right: FanOut[list[int]]


PlanT = TypeVar("PlanT", Plan, AnnotatedPlan)


def plan_of(kind: type[PlanT], *texts: str) -> PlanT:
    return kind(topic="t", questions=[SubQuestion(text=t) for t in texts])


class Gauge:
    """Counts analysts in flight; each blocks until ``target`` are in flight at once."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.in_flight = 0
        self.peak = 0
        self.calls = 0
        self.reached = anyio.Event()

    async def analyst(self, question: SubQuestion) -> str:
        self.calls += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.in_flight >= self.target:
                self.reached.set()
            await self.reached.wait()
            return question.text.upper()
        finally:
            self.in_flight -= 1


# -- one task per item, item order ---------------------------------------------------------


@pytest.mark.parametrize("plan_type", [Plan, AnnotatedPlan], ids=["FanOut[...]", "Annotated"])
async def test_fan_out_runs_one_task_per_item_and_keeps_item_order(
    runtime: AgentRuntime, plan_type: type[Plan] | type[AnnotatedPlan]
) -> None:
    texts = ["q0", "q1", "q2", "q3"]
    done = [anyio.Event() for _ in texts]
    finished: list[str] = []
    synthesised: list[Any] = []

    async def decompose(topic: str) -> BaseModel:
        return plan_type(topic="t", questions=[SubQuestion(text=t) for t in texts])

    async def analyst(question: SubQuestion) -> str:
        # Item i finishes only after item i + 1: completion order is the reverse of item order.
        index = texts.index(question.text)
        if index + 1 < len(texts):
            await done[index + 1].wait()
        finished.append(question.text)
        done[index].set()
        return f"answer to {question.text}"

    async def synthesiser(answers: list[str]) -> str:
        synthesised.append(answers)
        return " | ".join(answers)

    group = AgentGroup(
        name="decomposition",
        topology={
            decompose: Edge(to=(analyst,)),
            analyst: Edge(to=(synthesiser,)),
            synthesiser: Edge.terminal(),
        },
    )
    with anyio.fail_after(HANG_GUARD):
        result = await runtime.run_group(group, TaskSpec(input="topic"))
    assert result.is_ok(), result.error
    assert finished == ["q3", "q2", "q1", "q0"]
    expected = [f"answer to {t}" for t in texts]
    assert synthesised == [expected]
    assert result.output == " | ".join(expected)
    # The fanned-out node: an aggregate result (what was passed on) plus one slot per item.
    assert result.results["analyst"].output == expected
    slots = result.slots["analyst"]
    assert [s.output for s in slots] == expected
    assert len({s.task_id for s in slots}) == len(texts)
    assert all(s.agent == "analyst" for s in slots)
    assert result.failed_slots == {}


# -- bounded concurrency: measured peak ----------------------------------------------------


async def test_uncapped_fan_out_runs_all_analysts_at_once(runtime: AgentRuntime) -> None:
    n = 8
    gauge = Gauge(target=n)

    async def decompose(topic: str) -> Plan:
        return plan_of(Plan, *(f"q{i}" for i in range(n)))

    async def synthesiser(answers: list[str]) -> list[str]:
        return answers

    analyst = gauge.analyst
    group = AgentGroup(
        name="g",
        topology={
            decompose: Edge(to=(analyst,)),
            analyst: Edge(to=(synthesiser,)),
            synthesiser: Edge.terminal(),
        },
    )
    with anyio.fail_after(HANG_GUARD):
        result = await runtime.run_group(group, TaskSpec(input="topic"))
    assert result.is_ok(), result.error
    assert gauge.peak == n
    assert gauge.calls == n
    assert result.output == [f"Q{i}" for i in range(n)]


@pytest.mark.parametrize(
    ("edge_cap", "group_cap", "expected"),
    [(3, None, 3), (None, 2, 2), (2, 5, 2), (1, None, 1)],
    ids=["edge cap", "group cap", "edge overrides group", "serial"],
)
async def test_capped_fan_out_never_exceeds_the_cap(
    runtime: AgentRuntime, edge_cap: int | None, group_cap: int | None, expected: int
) -> None:
    n = 7
    gauge = Gauge(target=expected)

    async def decompose(topic: str) -> Plan:
        return plan_of(Plan, *(f"q{i}" for i in range(n)))

    async def synthesiser(answers: list[str]) -> list[str]:
        return answers

    analyst = gauge.analyst
    group = AgentGroup(
        name="g",
        topology={
            decompose: Edge(to=(analyst,), max_concurrency=edge_cap),
            analyst: Edge(to=(synthesiser,)),
            synthesiser: Edge.terminal(),
        },
        max_concurrency=group_cap,
    )
    with anyio.fail_after(HANG_GUARD):
        result = await runtime.run_group(group, TaskSpec(input="topic"))
    assert result.is_ok(), result.error
    # The cap was reached (the gauge's event fired at `expected` in flight) and never passed.
    assert gauge.peak == expected
    assert gauge.calls == n
    assert result.output == [f"Q{i}" for i in range(n)]


# -- failed slots ----------------------------------------------------------------------------


async def test_failed_slots_are_reported_without_failing_the_group(runtime: AgentRuntime) -> None:
    received: list[list[str]] = []

    async def decompose(topic: str) -> Plan:
        return plan_of(Plan, "q0", "q1", "bad", "q3")

    async def analyst(question: SubQuestion) -> str:
        if question.text == "bad":
            raise ValueError("cannot analyse 'bad'")
        return question.text.upper()

    async def synthesiser(answers: list[str]) -> str:
        received.append(answers)
        return ",".join(answers)

    group = AgentGroup(
        name="g",
        topology={
            decompose: Edge(to=(analyst,)),
            analyst: Edge(to=(synthesiser,)),
            synthesiser: Edge.terminal(),
        },
    )
    result = await runtime.run_group(group, TaskSpec(input="topic"))
    assert result.is_ok(), result.error
    # Successors receive the successful outputs, in item order.
    assert received == [["Q0", "Q1", "Q3"]]
    assert result.output == "Q0,Q1,Q3"
    assert result.failed_slots == {"analyst": [2]}
    bad = result.slots["analyst"][2]
    assert isinstance(bad.error, ValueError)
    assert result.status["analyst"] == "succeeded"
    assert result.results["analyst"].output == ["Q0", "Q1", "Q3"]
    assert result.errors == {}


@pytest.mark.parametrize("where", ["edge", "group"])
async def test_require_all_slots_fails_the_node_and_cancels_the_other_slots(
    runtime: AgentRuntime, where: str
) -> None:
    never = anyio.Event()
    cancelled: list[str] = []
    others_started = anyio.Event()
    started = 0

    async def decompose(topic: str) -> Plan:
        return plan_of(Plan, "q0", "bad", "q2")

    async def analyst(question: SubQuestion) -> str:
        nonlocal started
        if question.text == "bad":
            await others_started.wait()
            raise ValueError("cannot analyse 'bad'")
        started += 1
        if started == 2:
            others_started.set()
        try:
            await never.wait()
        finally:
            cancelled.append(question.text)
        return question.text

    async def synthesiser(answers: list[str]) -> str:
        return ",".join(answers)

    group = AgentGroup(
        name="g",
        topology={
            decompose: Edge(to=(analyst,), require_all_slots=where == "edge"),
            analyst: Edge(to=(synthesiser,)),
            synthesiser: Edge.terminal(),
        },
        require_all_slots=where == "group",
    )
    with anyio.fail_after(HANG_GUARD):
        result = await runtime.run_group(group, TaskSpec(input="topic"))
    assert not result.is_ok()
    assert isinstance(result.error, ExceptionGroup)
    assert "1 of 3 fan-out slots of node 'analyst' failed" in str(result.error)
    assert "2 cancelled" in str(result.error)
    assert [type(e) for e in result.error.exceptions] == [ValueError]
    assert result.status == {
        "decompose": "succeeded",
        "analyst": "failed",
        "synthesiser": "upstream_failed",
    }
    slots = result.slots["analyst"]
    assert isinstance(slots[1].error, ValueError)
    assert isinstance(slots[0].error, TaskCancelledError)
    assert isinstance(slots[2].error, TaskCancelledError)
    assert sorted(cancelled) == ["q0", "q2"]
    assert result.errors == {"analyst": result.error}


async def test_an_empty_fan_out_passes_on_an_empty_list(runtime: AgentRuntime) -> None:
    calls: list[Any] = []

    async def decompose(topic: str) -> Plan:
        return plan_of(Plan)

    async def analyst(question: SubQuestion) -> str:
        calls.append(question)
        return "never"

    async def synthesiser(answers: list[str]) -> int:
        return len(answers)

    group = AgentGroup(
        name="g",
        topology={
            decompose: Edge(to=(analyst,)),
            analyst: Edge(to=(synthesiser,)),
            synthesiser: Edge.terminal(),
        },
    )
    result = await runtime.run_group(group, TaskSpec(input="topic"))
    assert result.is_ok(), result.error
    assert calls == []
    assert result.output == 0
    assert result.slots["analyst"] == []


# -- what fans out, and how --------------------------------------------------------------------


async def test_fan_out_false_sends_the_whole_output(runtime: AgentRuntime) -> None:
    """decompose fans out to the analysts and sends its whole plan to the synthesiser."""
    received: list[dict[str, Any]] = []

    async def decompose(topic: str) -> Plan:
        return plan_of(Plan, "a", "b")

    async def analyst(question: SubQuestion) -> str:
        return question.text.upper()

    async def synthesiser(inputs: dict[str, Any]) -> str:
        received.append(inputs)
        plan: Plan = inputs["decompose"]
        return f"{plan.topic}: {inputs['analyst']}"

    group = AgentGroup(
        name="g",
        topology={
            decompose: (Edge(to=(analyst,)), Edge(to=(synthesiser,), fan_out=False)),
            analyst: Edge(to=(synthesiser,)),
            synthesiser: Edge.terminal(),
        },
    )
    result = await runtime.run_group(group, TaskSpec(input="topic"))
    assert result.is_ok(), result.error
    assert result.output == "t: ['A', 'B']"
    assert list(received[0]) == ["decompose", "analyst"]
    assert isinstance(received[0]["decompose"], Plan)
    assert result.status["synthesiser"] == "succeeded"
    assert "synthesiser" not in result.slots


async def test_mapper_builds_each_items_task(runtime: AgentRuntime) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    async def decompose(topic: str) -> Plan:
        return plan_of(Plan, "a", "b", "c")

    async def analyst(text: str, ctx: AgentContext) -> str:
        seen.append((text, dict(ctx.task.metadata)))
        return text

    async def synthesiser(answers: list[str]) -> str:
        return "".join(answers)

    def per_item(question: SubQuestion) -> TaskSpec:
        return TaskSpec(input=question.text * 2, metadata={"item": question.text})

    group = AgentGroup(
        name="g",
        topology={
            decompose: Edge(to=(analyst,), mapper=per_item),
            analyst: Edge(to=(synthesiser,)),
            synthesiser: Edge.terminal(),
        },
    )
    result = await runtime.run_group(group, TaskSpec(input="topic"))
    assert result.output == "aabbcc"
    assert sorted(seen) == [("aa", {"item": "a"}), ("bb", {"item": "b"}), ("cc", {"item": "c"})]


async def test_fan_out_into_a_join_pairs_each_item_with_the_other_inputs(
    runtime: AgentRuntime,
) -> None:
    async def start(topic: str) -> str:
        return topic

    async def planner(topic: str) -> Plan:
        return plan_of(Plan, "a", "b")

    async def background(topic: str) -> str:
        return f"background on {topic}"

    async def analyst(inputs: dict[str, Any]) -> str:
        question = SubQuestion.model_validate(inputs["planner"])
        return f"{question.text} with {inputs['background']}"

    async def synthesiser(answers: list[str]) -> list[str]:
        return answers

    group = AgentGroup(
        name="g",
        topology={
            start: Edge(to=(planner, background)),
            planner: Edge(to=(analyst,)),
            background: Edge(to=(analyst,)),
            analyst: Edge(to=(synthesiser,)),
            synthesiser: Edge.terminal(),
        },
    )
    result = await runtime.run_group(group, TaskSpec(input="rust"))
    assert result.is_ok(), result.error
    assert result.output == ["a with background on rust", "b with background on rust"]


async def test_two_fan_outs_into_one_node_fail_it(runtime: AgentRuntime) -> None:
    async def start(topic: str) -> str:
        return topic

    async def left(topic: str) -> Plan:
        return plan_of(Plan, "a")

    async def right(topic: str) -> Plan:
        return plan_of(Plan, "b")

    async def both(inputs: dict[str, Any]) -> str:
        return "never"

    group = AgentGroup(
        name="g",
        topology={
            start: Edge(to=(left, right)),
            left: Edge(to=(both,)),
            right: Edge(to=(both,)),
            both: Edge.terminal(),
        },
    )
    result = await runtime.run_group(group, TaskSpec(input="x"))
    assert not result.is_ok()
    assert isinstance(result.error, ValueError)
    assert "several predecessors ('left', 'right')" in str(result.error)
    assert result.status["both"] == "failed"


async def test_an_output_with_several_fan_out_fields_fails_its_node(runtime: AgentRuntime) -> None:
    async def start(value: str) -> TwoFanOuts:
        return TwoFanOuts(left=[1], right=[2])

    async def worker(value: int) -> int:
        return value

    group = AgentGroup(name="g", topology={start: Edge(to=(worker,)), worker: Edge.terminal()})
    result = await runtime.run_group(group, TaskSpec(input="x"))
    assert isinstance(result.error, TypeError)
    assert "several fields as FanOut ('left', 'right')" in str(result.error)
    assert result.status == {"start": "failed", "worker": "upstream_failed"}


async def test_slot_usage_is_totalled(runtime: AgentRuntime) -> None:
    async def decompose(topic: str, ctx: AgentContext) -> Plan:
        ctx.report_usage(input_tokens=1, requests=1)
        return plan_of(Plan, "a", "b", "c")

    async def analyst(question: SubQuestion, ctx: AgentContext) -> str:
        ctx.report_usage(input_tokens=10, output_tokens=2, requests=1)
        return question.text

    async def synthesiser(answers: list[str]) -> str:
        return "".join(answers)

    group = AgentGroup(
        name="g",
        topology={
            decompose: Edge(to=(analyst,)),
            analyst: Edge(to=(synthesiser,)),
            synthesiser: Edge.terminal(),
        },
    )
    result = await runtime.run_group(group, TaskSpec(input="topic"))
    assert result.results["analyst"].usage == Usage(input_tokens=30, output_tokens=6, requests=3)
    assert result.results["analyst"].attempts == 3
    assert result.usage == Usage(input_tokens=31, output_tokens=6, requests=4)


# -- murmur.Agent nodes with a FanOut output model ----------------------------------------------


async def test_murmur_agents_fan_out_over_a_structured_output(runtime: AgentRuntime) -> None:
    analyst_prompts: list[str] = []

    async def plan_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        tool = info.output_tools[0].name
        args = {"topic": "sky", "questions": [{"text": "why blue"}, {"text": "why red"}]}
        return ModelResponse(parts=[ToolCallPart(tool, args)])

    async def analyst_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        prompt = str(messages[0].parts[-1].content)  # type: ignore[union-attr]
        analyst_prompts.append(prompt)
        question = SubQuestion.model_validate_json(prompt)
        return ModelResponse(parts=[TextPart(f"answer: {question.text}")])

    decomposer = murmur.Agent(name="decomposer", model=FunctionModel(plan_model), output_type=Plan)
    analyst = murmur.Agent(name="analyst", model=FunctionModel(analyst_model))

    async def synthesiser(answers: list[str]) -> str:
        return "; ".join(answers)

    group = AgentGroup(
        name="research",
        topology={
            decomposer: Edge(to=(analyst,)),
            analyst: Edge(to=(synthesiser,)),
            synthesiser: Edge.terminal(),
        },
    )
    result = await runtime.run_group(group, TaskSpec(input="the sky"))
    assert result.is_ok(), result.error
    assert isinstance(result.results["decomposer"].output, Plan)
    assert result.output == "answer: why blue; answer: why red"
    assert sorted(analyst_prompts) == ['{"text":"why blue"}', '{"text":"why red"}']
    assert result.usage.requests == 3
