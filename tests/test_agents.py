"""Agents: murmur.Agent, from_pydantic_ai, raw pydantic_ai.Agent and plain async functions."""

from __future__ import annotations

import gc
import sys
import tomllib
import weakref
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, ValidationError
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import RunContext, UnexpectedModelBehavior
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.usage import RequestUsage, RunUsage

import murmur
from murmur import (
    AgentContext,
    AgentRuntime,
    FunctionAgent,
    InputValidationError,
    PydanticAIAgent,
    TaskSpec,
    Usage,
    current_context,
    from_pydantic_ai,
)
from murmur._agents import PROVIDER_EXTRAS

pytestmark = pytest.mark.anyio


def user_prompt(messages: list[ModelMessage]) -> str:
    """The user prompt of the (single) request a FunctionModel received."""
    prompts = [
        part.content
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, UserPromptPart)
    ]
    assert len(prompts) == 1
    content = prompts[0]
    assert isinstance(content, str)
    return content


class PromptRecorder:
    """A FunctionModel function that records each prompt and answers with its upper case."""

    def __init__(self, usage: RequestUsage | None = None) -> None:
        self.prompts: list[str] = []
        self.usage = usage

    async def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        prompt = user_prompt(messages)
        self.prompts.append(prompt)
        response = ModelResponse(parts=[TextPart(prompt.upper())])
        if self.usage is not None:
            response.usage = self.usage
        return response


class Question(BaseModel):
    text: str
    priority: int = 0


# -- murmur.Agent ----------------------------------------------------------------------------


async def test_murmur_agent_with_test_model(runtime: AgentRuntime) -> None:
    agent = murmur.Agent(name="tester", model=TestModel(custom_output_text="hello there"))
    result = await runtime.run(agent, TaskSpec(input="hi", task_id="t-1"))
    assert result.is_ok(), result.error
    assert result.output == "hello there"
    assert result.agent == "tester"
    assert result.task_id == "t-1"
    assert result.attempts == 1
    assert result.usage.requests == 1
    assert result.usage.total_tokens > 0


async def test_murmur_agent_with_structured_output(runtime: AgentRuntime) -> None:
    class Answer(BaseModel):
        value: int

    agent = murmur.Agent(
        name="structured",
        model=TestModel(custom_output_args={"value": 42}),
        output_type=Answer,
    )
    result = await runtime.run(agent, TaskSpec(input="the answer?"))
    assert result.unwrap() == Answer(value=42)


async def test_murmur_agent_with_function_model(runtime: AgentRuntime) -> None:
    recorder = PromptRecorder()
    agent = murmur.Agent(name="shouter", model=FunctionModel(recorder), instructions="shout")
    results = await runtime.gather(agent, [TaskSpec(input="a"), TaskSpec(input="b")])
    assert [r.unwrap() for r in results] == ["A", "B"]
    assert sorted(recorder.prompts) == ["a", "b"]
    assert all(r.agent == "shouter" for r in results)


async def test_murmur_agent_tools_see_the_murmur_context(runtime: AgentRuntime) -> None:
    seen: list[tuple[str, str]] = []

    def whoami(ctx: RunContext[AgentContext]) -> str:
        """Report who runs this tool."""
        seen.append((ctx.deps.agent, ctx.deps.task.task_id))
        assert current_context() is ctx.deps
        return "ok"

    agent = murmur.Agent(name="tooler", model=TestModel(call_tools=["whoami"]), tools=(whoami,))
    result = await runtime.run(agent, TaskSpec(input="go", task_id="tool-task"))
    assert result.is_ok(), result.error
    assert seen == [("tooler", "tool-task")]
    assert result.usage.tool_calls == 1


async def test_murmur_agent_requires_a_name() -> None:
    with pytest.raises(ValueError, match="name"):
        murmur.Agent(name="", model=TestModel())


async def test_murmur_agents_compare_by_identity() -> None:
    model = TestModel()
    a = murmur.Agent(name="same", model=model)
    b = murmur.Agent(name="same", model=model)
    assert a == a
    assert a != b
    assert len({a, b}) == 2


# -- pydantic-ai agents ----------------------------------------------------------------------


async def test_from_pydantic_ai_runs_the_wrapped_agent(runtime: AgentRuntime) -> None:
    recorder = PromptRecorder()
    inner = PydanticAgent(FunctionModel(recorder), name="inner")
    wrapped = from_pydantic_ai(inner)
    assert isinstance(wrapped, PydanticAIAgent)
    assert wrapped.agent is inner
    result = await runtime.run(wrapped, TaskSpec(input="quiet"))
    assert result.unwrap() == "QUIET"
    assert result.agent == "inner"
    assert recorder.prompts == ["quiet"]


async def test_from_pydantic_ai_names(runtime: AgentRuntime) -> None:
    unnamed = PydanticAgent(TestModel())
    assert from_pydantic_ai(unnamed).name == "pydantic_ai_agent"
    assert from_pydantic_ai(PydanticAgent(TestModel(), name="own")).name == "own"
    renamed = from_pydantic_ai(PydanticAgent(TestModel(), name="own"), name="chosen")
    result = await runtime.run(renamed, TaskSpec(input="x"))
    assert result.agent == "chosen"
    with pytest.raises(ValueError, match="name"):
        from_pydantic_ai(unnamed, name="  ")


async def test_from_pydantic_ai_passes_deps(runtime: AgentRuntime) -> None:
    seen: list[Any] = []
    inner: PydanticAgent[dict[str, str], str] = PydanticAgent(
        TestModel(call_tools=["lookup"]), deps_type=dict
    )

    @inner.tool
    def lookup(ctx: RunContext[dict[str, str]]) -> str:
        seen.append(ctx.deps)
        return "found"

    deps = {"db": "primary"}
    result = await runtime.run(from_pydantic_ai(inner, deps=deps), TaskSpec(input="find"))
    assert result.is_ok(), result.error
    assert seen == [deps]


async def test_a_pydantic_ai_agent_can_be_passed_straight_in(runtime: AgentRuntime) -> None:
    recorder = PromptRecorder()
    inner = PydanticAgent(FunctionModel(recorder), name="direct")
    result = await runtime.run(inner, TaskSpec(input="raw agent"))
    assert result.unwrap() == "RAW AGENT"
    assert result.agent == "direct"
    results = await runtime.gather(inner, [TaskSpec(input=str(i)) for i in range(3)])
    assert [r.unwrap() for r in results] == ["0", "1", "2"]
    unnamed = await runtime.run(PydanticAgent(TestModel()), TaskSpec(input="x"))
    assert unnamed.agent == "pydantic_ai_agent"


async def test_pydantic_ai_usage_is_carried_into_the_result(runtime: AgentRuntime) -> None:
    recorder = PromptRecorder(usage=RequestUsage(input_tokens=11, output_tokens=7))
    agent = from_pydantic_ai(PydanticAgent(FunctionModel(recorder)))
    result = await runtime.run(agent, TaskSpec(input="count me"))
    assert result.usage == Usage(input_tokens=11, output_tokens=7, requests=1, tool_calls=0)
    assert result.usage.total_tokens == 18


async def test_pydantic_ai_usage_sums_over_model_requests(runtime: AgentRuntime) -> None:
    calls = 0

    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            return ModelResponse(
                parts=[ToolCallPart("ping", {})],
                usage=RequestUsage(input_tokens=10, output_tokens=1),
            )
        return ModelResponse(
            parts=[TextPart("pong")], usage=RequestUsage(input_tokens=20, output_tokens=2)
        )

    inner = PydanticAgent(FunctionModel(model_fn))

    @inner.tool_plain
    def ping() -> str:
        return "pong"

    result = await runtime.run(inner, TaskSpec(input="ping"))
    assert result.unwrap() == "pong"
    assert result.usage == Usage(input_tokens=30, output_tokens=3, requests=2, tool_calls=1)


async def test_pydantic_ai_usage_spent_before_a_failure_is_kept(runtime: AgentRuntime) -> None:
    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(
            parts=[TextPart("not a number")],
            usage=RequestUsage(input_tokens=100, output_tokens=10),
        )

    agent = murmur.Agent(name="picky", model=FunctionModel(model_fn), output_type=int)
    result = await runtime.run(agent, TaskSpec(input="a number please"))
    assert isinstance(result.error, UnexpectedModelBehavior)
    requests = result.usage.requests
    assert requests >= 2  # the first answer and at least one retry
    assert result.usage == Usage(
        input_tokens=100 * requests, output_tokens=10 * requests, requests=requests
    )


async def test_pydantic_ai_model_failure_is_an_error_result(runtime: AgentRuntime) -> None:
    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise ConnectionError("provider down")

    result = await runtime.run(PydanticAgent(FunctionModel(model_fn)), TaskSpec(input="x"))
    assert not result.is_ok()
    assert isinstance(result.error, ConnectionError)
    assert str(result.error) == "provider down"


# -- how inputs reach the model --------------------------------------------------------------


async def test_str_input_reaches_the_model_verbatim(runtime: AgentRuntime) -> None:
    recorder = PromptRecorder()
    agent = from_pydantic_ai(PydanticAgent(FunctionModel(recorder)))
    text = '  {"looks": "like json"}\n but is a string  '
    result = await runtime.run(agent, TaskSpec(input=text))
    assert result.is_ok(), result.error
    assert recorder.prompts == [text]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": 1, "b": [True, None]}, '{"a":1,"b":[true,null]}'),
        ([1, "two"], '[1,"two"]'),
        (42, "42"),
        (None, "null"),
        (Question(text="why?", priority=2), '{"text":"why?","priority":2}'),
    ],
)
async def test_other_inputs_reach_the_model_as_json(
    runtime: AgentRuntime, value: Any, expected: str
) -> None:
    recorder = PromptRecorder()
    agent = murmur.Agent(name="json", model=FunctionModel(recorder))
    result = await runtime.run(agent, TaskSpec(input=value))
    assert result.is_ok(), result.error
    assert recorder.prompts == [expected]


async def test_input_type_coerces_before_rendering(runtime: AgentRuntime) -> None:
    recorder = PromptRecorder()
    agent = murmur.Agent(name="typed", model=FunctionModel(recorder), input_type=Question)
    result = await runtime.run(agent, TaskSpec(input={"text": "hi"}))
    assert result.is_ok(), result.error
    assert recorder.prompts == ['{"text":"hi","priority":0}']


# -- input validation ------------------------------------------------------------------------


async def test_input_type_failure_is_an_error_result_and_other_slots_still_run(
    runtime: AgentRuntime,
) -> None:
    recorder = PromptRecorder()
    agent = murmur.Agent(name="typed", model=FunctionModel(recorder), input_type=Question)
    tasks = [
        TaskSpec(input={"text": "first"}),
        TaskSpec(input={"priority": "high"}),
        TaskSpec(input=Question(text="third")),
    ]
    results = await runtime.gather(agent, tasks)
    assert results[0].is_ok()
    assert results[2].is_ok()
    bad = results[1]
    assert not bad.is_ok()
    assert isinstance(bad.error, InputValidationError)
    assert isinstance(bad.error, ValueError)
    assert bad.error.agent == "typed"
    locs = {tuple(e["loc"]) for e in bad.error.errors}
    assert locs == {("text",), ("priority",)}
    assert "typed" in str(bad.error)
    assert "text" in str(bad.error)
    # The invalid input never reached the model; the valid ones did.
    assert len(recorder.prompts) == 2
    assert bad.task_id == tasks[1].task_id


async def test_from_pydantic_ai_input_type(runtime: AgentRuntime) -> None:
    recorder = PromptRecorder()
    agent = from_pydantic_ai(PydanticAgent(FunctionModel(recorder)), input_type=int)
    ok, bad = await runtime.gather(agent, [TaskSpec(input="12"), TaskSpec(input="twelve")])
    assert ok.unwrap() == "12"
    assert isinstance(bad.error, InputValidationError)
    assert recorder.prompts == ["12"]


async def test_function_agent_annotation_is_its_input_type(runtime: AgentRuntime) -> None:
    received: list[Any] = []

    async def typed(question: Question) -> str:
        received.append(question)
        return question.text

    results = await runtime.gather(
        typed,
        [TaskSpec(input={"text": "a"}), TaskSpec(input=5), TaskSpec(input=Question(text="c"))],
    )
    assert results[0].unwrap() == "a"
    assert isinstance(results[1].error, InputValidationError)
    assert results[2].unwrap() == "c"
    assert all(isinstance(q, Question) for q in received)
    assert len(received) == 2


async def test_function_agent_without_annotation_takes_anything(runtime: AgentRuntime) -> None:
    async def echo(value):  # type: ignore[no-untyped-def]
        return value

    marker = object()
    result = await runtime.run(echo, TaskSpec(input=marker))
    assert result.output is marker


# -- function agents -------------------------------------------------------------------------


async def test_function_agent_without_ctx(runtime: AgentRuntime) -> None:
    async def double(x: int) -> int:
        return x * 2

    result = await runtime.run(double, TaskSpec(input=21))
    assert result.unwrap() == 42
    assert result.agent == "double"
    assert result.attempts == 1
    assert result.usage == Usage()


async def test_function_agent_with_ctx(runtime: AgentRuntime) -> None:
    seen: list[AgentContext] = []

    async def describe(value: str, ctx: AgentContext) -> str:
        seen.append(ctx)
        assert current_context() is ctx
        return f"{ctx.agent}:{ctx.task.task_id}:{value}"

    result = await runtime.run(describe, TaskSpec(input="v", task_id="id-1", metadata={"k": 1}))
    assert result.unwrap() == "describe:id-1:v"
    (ctx,) = seen
    assert ctx.runtime is runtime
    assert ctx.task.metadata == {"k": 1}
    assert ctx.depth == 0
    assert ctx.parent is None
    assert ctx.attempt == 1


async def test_ctx_can_have_any_name_when_both_parameters_are_required(
    runtime: AgentRuntime,
) -> None:
    async def agent(value: str, context: AgentContext) -> str:
        return context.task.task_id

    result = await runtime.run(agent, TaskSpec(input="x", task_id="named"))
    assert result.unwrap() == "named"


async def test_function_agent_names(runtime: AgentRuntime) -> None:
    async def summarise(text: str) -> str:
        return text[:3]

    assert (await runtime.run(summarise, TaskSpec(input="abcdef"))).agent == "summarise"
    named = FunctionAgent(summarise, name="short")
    result = await runtime.run(named, TaskSpec(input="abcdef"))
    assert (result.agent, result.output) == ("short", "abc")

    async def scale(x: int, factor: int = 3) -> int:
        return x * factor

    result = await runtime.run(partial(scale, factor=10), TaskSpec(input=4))
    assert (result.agent, result.output) == ("scale", 40)

    with pytest.raises(ValueError, match="name"):
        FunctionAgent(summarise, name="")


async def test_callable_object_with_async_call(runtime: AgentRuntime) -> None:
    class Greeter:
        def __init__(self, greeting: str) -> None:
            self.greeting = greeting

        async def __call__(self, name: str) -> str:
            return f"{self.greeting}, {name}"

    result = await runtime.run(Greeter("hello"), TaskSpec(input="ada"))
    assert result.unwrap() == "hello, ada"
    assert result.agent == "Greeter"


async def test_equal_callable_objects_each_run_themselves(runtime: AgentRuntime) -> None:
    @dataclass(frozen=True)
    class Tagger:
        tag: str
        calls: list[int] = field(default_factory=list, compare=False, hash=False)

        async def __call__(self, value: int) -> str:
            self.calls.append(value)
            return self.tag

    first, second = Tagger("same"), Tagger("same")
    assert first == second
    await runtime.run(first, TaskSpec(input=1))
    await runtime.run(second, TaskSpec(input=2))
    await runtime.gather(second, [TaskSpec(input=3)])
    assert first.calls == [1]
    assert second.calls == [2, 3]


async def test_running_a_function_does_not_keep_it_alive(runtime: AgentRuntime) -> None:
    def make_agent(payload: bytes) -> Any:
        async def agent(value: int) -> int:
            return value + len(payload)

        return agent

    refs = []
    for i in range(3):
        agent = make_agent(b"x" * 1000)
        assert (await runtime.run(agent, TaskSpec(input=i))).unwrap() == i + 1000
        assert (await runtime.run(agent, TaskSpec(input=i))).unwrap() == i + 1000
        refs.append(weakref.ref(agent))
        del agent
    gc.collect()
    assert [ref() for ref in refs] == [None, None, None]


async def test_function_agent_exception_is_the_result_error_unwrapped(
    runtime: AgentRuntime,
) -> None:
    boom = RuntimeError("agent broke")

    async def broken(value: object) -> None:
        raise boom

    result = await runtime.run(broken, TaskSpec(input=None))
    assert not result.is_ok()
    assert result.error is boom
    assert result.attempts == 1


async def test_ctx_report_usage(runtime: AgentRuntime) -> None:
    async def counted(value: str, ctx: AgentContext) -> str:
        ctx.report_usage(input_tokens=10, output_tokens=5, requests=1)
        ctx.report_usage(Usage(input_tokens=1, tool_calls=2))
        ctx.report_usage(RunUsage(input_tokens=100, output_tokens=50, requests=1))
        assert ctx.usage == Usage(input_tokens=111, output_tokens=55, requests=2, tool_calls=2)
        return value

    result = await runtime.run(counted, TaskSpec(input="x"))
    assert result.is_ok(), result.error
    assert result.usage == Usage(input_tokens=111, output_tokens=55, requests=2, tool_calls=2)
    assert result.usage.total_tokens == 166


async def test_usage_reported_before_a_failure_is_kept(runtime: AgentRuntime) -> None:
    async def spends_then_fails(value: str, ctx: AgentContext) -> str:
        ctx.report_usage(input_tokens=7, requests=1)
        raise ValueError("after spending")

    result = await runtime.run(spends_then_fails, TaskSpec(input="x"))
    assert isinstance(result.error, ValueError)
    assert result.usage == Usage(input_tokens=7, requests=1)


async def test_report_usage_rejects_negative_counts(runtime: AgentRuntime) -> None:
    async def negative(value: str, ctx: AgentContext) -> str:
        ctx.report_usage(input_tokens=-1)
        return value

    result = await runtime.run(negative, TaskSpec(input="x"))
    assert isinstance(result.error, ValueError)
    assert result.usage == Usage()


async def test_ctx_spawns_children_one_level_deeper(runtime: AgentRuntime) -> None:
    seen: list[tuple[int, str, str | None]] = []

    async def child(value: int, ctx: AgentContext) -> int:
        seen.append((ctx.depth, ctx.trace_id, ctx.parent_task_id))
        ctx.report_usage(requests=1)
        return value + 1

    async def parent(value: int, ctx: AgentContext) -> list[int]:
        seen.append((ctx.depth, ctx.trace_id, ctx.parent_task_id))
        one = await ctx.run(child, TaskSpec(input=value))
        many = await ctx.gather(child, [TaskSpec(input=value * 10), TaskSpec(input=value * 100)])
        return [one.unwrap(), *(r.unwrap() for r in many)]

    result = await runtime.run(parent, TaskSpec(input=1, task_id="root"))
    assert result.unwrap() == [2, 11, 101]
    root_depth, trace, root_parent = seen[0]
    assert (root_depth, root_parent) == (0, None)
    assert [s[0] for s in seen[1:]] == [1, 1, 1]
    assert all(s[1] == trace for s in seen[1:])
    assert all(s[2] == "root" for s in seen[1:])
    # Child usage belongs to the children's results, not the parent's.
    assert result.usage == Usage()


async def test_current_context_outside_a_task_raises() -> None:
    with pytest.raises(LookupError):
        current_context()


async def test_current_context_inside_a_pydantic_ai_model(runtime: AgentRuntime) -> None:
    seen: list[str] = []

    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(current_context().task.task_id)
        return ModelResponse(parts=[TextPart("ok")])

    result = await runtime.run(PydanticAgent(FunctionModel(model_fn)), TaskSpec(input="x"))
    assert result.is_ok(), result.error
    assert seen == [result.task_id]


# -- bad agents ------------------------------------------------------------------------------

ACCEPTED = ("murmur.Agent", "pydantic_ai.Agent", "from_pydantic_ai", "async def f(input)")


def sync_function(value: str) -> str:
    return value


class NotAnAgent:
    pass


@pytest.mark.parametrize(
    "bad",
    [42, "agent-name", None, sync_function, NotAnAgent(), NotAnAgent, lambda x: x],
    ids=["int", "str", "none", "sync-def", "object", "class", "lambda"],
)
async def test_bad_agents_raise_type_error_naming_what_is_accepted(
    runtime: AgentRuntime, bad: Any
) -> None:
    with pytest.raises(TypeError) as info:
        await runtime.run(bad, TaskSpec(input="x"))
    for accepted in ACCEPTED:
        assert accepted in str(info.value)
    with pytest.raises(TypeError) as info:
        await runtime.gather(bad, [TaskSpec(input="x")])
    for accepted in ACCEPTED:
        assert accepted in str(info.value)


async def test_bad_function_signatures_raise_type_error(runtime: AgentRuntime) -> None:
    async def no_params() -> None:
        return None

    async def three(a: int, b: int, c: int) -> None:
        return None

    with pytest.raises(TypeError, match="first parameter"):
        await runtime.run(no_params, TaskSpec(input=1))
    with pytest.raises(TypeError, match=r"\(input\) or \(input, ctx\)"):
        await runtime.run(three, TaskSpec(input=1))


async def test_function_agent_rejects_sync_functions() -> None:
    with pytest.raises(TypeError, match="async"):
        FunctionAgent(sync_function)  # type: ignore[arg-type]


async def test_from_pydantic_ai_rejects_other_objects() -> None:
    with pytest.raises(TypeError, match=r"pydantic_ai\.Agent"):
        from_pydantic_ai(murmur.Agent(name="x", model=TestModel()))  # type: ignore[arg-type]

    async def fn(value: str) -> str:
        return value

    with pytest.raises(TypeError, match=r"pydantic_ai\.Agent"):
        from_pydantic_ai(fn)  # type: ignore[arg-type]


async def test_agents_work_under_both_backends(anyio_backend: str) -> None:
    """The same three kinds of agent give the same results on asyncio and on Trio."""
    recorder = PromptRecorder()

    async def fn_agent(value: str) -> str:
        await anyio.lowlevel.checkpoint()
        return value.upper()

    async with AgentRuntime() as runtime:
        spec = murmur.Agent(name="spec", model=FunctionModel(recorder))
        wrapped = from_pydantic_ai(PydanticAgent(FunctionModel(recorder)))
        for agent in (spec, wrapped, fn_agent):
            result = await runtime.run(agent, TaskSpec(input=anyio_backend))
            assert result.unwrap() == anyio_backend.upper()


@pytest.mark.parametrize(
    "bad",
    [42, None, object(), ["openai:gpt-4o"], TestModel],
    ids=["int", "none", "object", "list", "model-class"],
)
async def test_murmur_agent_model_must_be_a_model_string_or_instance(bad: Any) -> None:
    with pytest.raises(ValidationError) as info:
        murmur.Agent(name="a", model=bad)
    (error,) = info.value.errors()
    assert error["loc"] == ("model",)
    assert "'openai:gpt-4o'" in error["msg"]
    assert "pydantic_ai.models.Model instance" in error["msg"]


async def test_murmur_agent_model_string_must_not_be_blank() -> None:
    with pytest.raises(ValidationError) as info:
        murmur.Agent(name="a", model="  ")
    (error,) = info.value.errors()
    assert error["loc"] == ("model",)
    assert "non-empty" in error["msg"]


# -- model providers -------------------------------------------------------------------------

# Each case hides the provider's client package from the import system (None in sys.modules
# is how Python marks a module as not importable), whether or not this venv has it.
MISSING_PROVIDERS = [
    ("openai:gpt-4o", "openai", "openai", "openai"),
    ("deepseek:deepseek-chat", "openai", "openai", "openai"),
    ("anthropic:claude-sonnet-4-5", "anthropic", "anthropic", "anthropic"),
    ("google:gemini-2.5-flash", "google", "google-genai", "google.genai"),
    ("groq:llama-3.3-70b-versatile", "groq", "groq", "groq"),
]
API_KEYS = ("OPENAI_API_KEY", "DEEPSEEK_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY")


@pytest.mark.parametrize(("model", "extra", "package", "module"), MISSING_PROVIDERS)
async def test_a_model_string_whose_provider_package_is_missing_fails_at_construction(
    monkeypatch: pytest.MonkeyPatch, model: str, extra: str, package: str, module: str
) -> None:
    for key in API_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ModuleNotFoundError) as info:
        murmur.Agent(name="triage", model=model)
    message = str(info.value)
    assert f"murmur.Agent 'triage': model {model!r}" in message
    assert f"needs the {package!r} package" in message
    assert f"pip install 'murmur-agents[{extra}]'" in message
    assert info.value.name == module


async def test_a_provider_without_a_murmur_extra_fails_when_first_run(
    monkeypatch: pytest.MonkeyPatch, runtime: AgentRuntime
) -> None:
    """Built on first use, the agent imports its provider: a missing package fails the call
    with pydantic-ai's advice, before any task runs, instead of failing every task."""
    monkeypatch.setitem(sys.modules, "openai", None)
    monkeypatch.delitem(sys.modules, "pydantic_ai.providers.bedrock_mantle", raising=False)
    agent = murmur.Agent(name="mantle", model="bedrock-mantle:openai.gpt-oss-120b")
    for call in (
        lambda: runtime.run(agent, TaskSpec(input="x")),
        lambda: runtime.gather(agent, [TaskSpec(input="x"), TaskSpec(input="y")]),
    ):
        with pytest.raises(ModuleNotFoundError) as info:
            await call()
        message = str(info.value)
        assert "murmur.Agent 'mantle': model 'bedrock-mantle:openai.gpt-oss-120b'" in message
        assert "pydantic-ai-slim[bedrock-mantle]" in message
        assert isinstance(info.value.__cause__, ImportError)


async def test_every_provider_extra_is_declared_in_pyproject() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    declared = pyproject["project"]["optional-dependencies"]
    for extra, _package, _module in set(PROVIDER_EXTRAS.values()):
        (requirement,) = declared[extra]
        assert requirement.startswith(f"pydantic-ai-slim[{extra}]>="), extra
