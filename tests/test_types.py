"""TaskSpec, AgentResult, ErrorInfo and Usage: the plain data that crosses every boundary."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError
from pydantic_ai.usage import RunUsage

from murmur import (
    AgentResult,
    AgentRuntime,
    ErrorInfo,
    RemoteAgentError,
    TaskSpec,
    Usage,
)

# -- TaskSpec --------------------------------------------------------------------------------


def test_taskspec_is_frozen() -> None:
    spec = TaskSpec(input="hello")
    with pytest.raises(ValidationError):
        spec.input = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        spec.task_id = "other"  # type: ignore[misc]
    assert spec.input == "hello"


def test_taskspec_ids_are_generated_unique_hex() -> None:
    ids = {TaskSpec(input=i).task_id for i in range(1000)}
    assert len(ids) == 1000
    for task_id in ids:
        assert len(task_id) == 32
        int(task_id, 16)  # hex


def test_taskspec_keeps_an_explicit_id_and_rejects_an_empty_one() -> None:
    assert TaskSpec(input=1, task_id="job-7").task_id == "job-7"
    with pytest.raises(ValidationError):
        TaskSpec(input=1, task_id="")


def test_taskspec_metadata_defaults_to_a_fresh_dict() -> None:
    a, b = TaskSpec(input=1), TaskSpec(input=2)
    assert a.metadata == {}
    assert b.metadata == {}
    assert a.metadata is not b.metadata
    c = TaskSpec(input=3, metadata={"user": "ada", "tags": ["x"]})
    assert c.metadata == {"user": "ada", "tags": ["x"]}


def test_taskspec_accepts_any_input() -> None:
    class Question(BaseModel):
        text: str

    q = Question(text="why?")
    assert TaskSpec(input=q).input is q
    assert TaskSpec(input=None).input is None
    assert TaskSpec(input={"a": [1, 2]}).input == {"a": [1, 2]}


@pytest.mark.parametrize(
    "value", ["plain text", 42, 1.5, None, [1, "two", None], {"nested": {"k": [True, False]}}]
)
def test_taskspec_json_round_trip(value: object) -> None:
    spec = TaskSpec(input=value, metadata={"attempt": 2, "who": "me"})
    back = TaskSpec.model_validate_json(spec.model_dump_json())
    assert back == spec
    assert back.task_id == spec.task_id
    assert back.input == value
    assert back.metadata == {"attempt": 2, "who": "me"}


def test_taskspec_with_a_model_input_serialises_as_its_json() -> None:
    class Question(BaseModel):
        text: str

    spec = TaskSpec(input=Question(text="why?"))
    back = TaskSpec.model_validate_json(spec.model_dump_json())
    assert back.input == {"text": "why?"}
    assert back.task_id == spec.task_id


# -- AgentResult -----------------------------------------------------------------------------


def test_ok_result_unwraps_to_its_output() -> None:
    result: AgentResult[str] = AgentResult(output="done", task_id="t1", agent="a")
    assert result.is_ok()
    assert result.unwrap() == "done"
    assert result.error is None


def test_none_output_is_still_a_success() -> None:
    result: AgentResult[None] = AgentResult(output=None, task_id="t1", agent="a")
    assert result.is_ok()
    assert result.unwrap() is None


def test_error_result_unwrap_reraises_the_same_exception() -> None:
    error = KeyError("missing")
    result: AgentResult[str] = AgentResult(error=error, task_id="t1", agent="a")
    assert not result.is_ok()
    assert result.output is None
    with pytest.raises(KeyError) as info:
        result.unwrap()
    assert info.value is error


def test_result_has_an_output_or_an_error_never_both() -> None:
    with pytest.raises(ValidationError, match="never both"):
        AgentResult(output="x", error=ValueError("y"), task_id="t1", agent="a")


def test_result_is_frozen_and_has_defaults() -> None:
    result: AgentResult[int] = AgentResult(output=1, task_id="t1", agent="a")
    assert result.usage == Usage()
    assert result.attempts == 1
    assert result.duration == 0.0
    assert result.worker is None  # ran in this process
    with pytest.raises(ValidationError):
        result.output = 2  # type: ignore[misc]


def test_result_json_round_trip_of_a_success() -> None:
    result: AgentResult[dict[str, int]] = AgentResult(
        output={"n": 3},
        usage=Usage(input_tokens=5, output_tokens=6, requests=1, tool_calls=2),
        attempts=2,
        duration=0.25,
        task_id="t1",
        agent="writer",
    )
    back = AgentResult[dict[str, int]].model_validate_json(result.model_dump_json())
    assert back.is_ok()
    assert back.output == {"n": 3}
    assert back.usage == result.usage
    assert (back.attempts, back.duration, back.task_id, back.agent) == (2, 0.25, "t1", "writer")


def test_result_json_form_of_an_error_is_type_message_traceback() -> None:
    result: AgentResult[str] = AgentResult(error=ValueError("bad value"), task_id="t1", agent="a")
    data = result.model_dump(mode="json")
    assert data["output"] is None
    assert data["error"] == {
        "type": "ValueError",
        "message": "bad value",
        "traceback": None,
        # Its classes and HTTP status: what retry rules judge a remote failure by.
        "kinds": ["builtins.ValueError"],
        "status_code": None,
        # How long an HTTP error's response asked to wait: what a 429 pauses its model for.
        "retry_after": None,
    }


def test_error_of_a_non_builtin_type_is_named_with_its_module() -> None:
    info = ErrorInfo.from_exception(RemoteAgentError("x.Y", "m"))
    assert (info.type, info.message) == ("x.Y", "m")
    info = ErrorInfo.from_exception(ErrorInfoProbe("odd"))
    assert info.type == f"{__name__}.ErrorInfoProbe"
    assert info.message == "odd"


class ErrorInfoProbe(Exception):
    pass


def test_result_json_round_trip_rebuilds_the_error_as_remote_agent_error() -> None:
    try:
        raise LookupError("no such key")
    except LookupError as exc:
        error = exc
    result: AgentResult[str] = AgentResult(error=error, task_id="t9", agent="finder")
    back = AgentResult[str].model_validate_json(result.model_dump_json())
    assert not back.is_ok()
    assert isinstance(back.error, RemoteAgentError)
    assert back.error.type_name == "LookupError"
    assert back.error.message == "no such key"
    assert back.error.remote_traceback is not None
    assert "Traceback" in back.error.remote_traceback
    assert "no such key" in back.error.remote_traceback
    assert str(back.error) == "LookupError: no such key"
    with pytest.raises(RemoteAgentError, match="LookupError: no such key"):
        back.unwrap()
    # A second hop keeps the original type and traceback, not "RemoteAgentError".
    again = AgentResult[str].model_validate_json(back.model_dump_json())
    assert isinstance(again.error, RemoteAgentError)
    assert again.error.type_name == "LookupError"
    assert again.error.remote_traceback == back.error.remote_traceback


def test_error_info_round_trip() -> None:
    info = ErrorInfo(type="pkg.Boom", message="it broke", traceback="Traceback ...")
    assert ErrorInfo.model_validate_json(info.model_dump_json()) == info
    error = info.to_exception()
    assert isinstance(error, RemoteAgentError)
    assert (error.type_name, error.message, error.remote_traceback) == (
        "pkg.Boom",
        "it broke",
        "Traceback ...",
    )


@pytest.mark.anyio
async def test_a_failed_task_round_trips_with_its_traceback() -> None:
    async def explode(value: object) -> None:
        raise ZeroDivisionError(f"cannot divide {value}")

    async with AgentRuntime() as runtime:
        result = await runtime.run(explode, TaskSpec(input=7, task_id="div"))
    assert isinstance(result.error, ZeroDivisionError)
    back = AgentResult[None].model_validate_json(result.model_dump_json())
    assert back.task_id == "div"
    assert back.agent == "explode"
    assert isinstance(back.error, RemoteAgentError)
    assert back.error.type_name == "ZeroDivisionError"
    assert back.error.message == "cannot divide 7"
    assert back.error.remote_traceback is not None
    assert "explode" in back.error.remote_traceback  # the agent's frame is in the traceback


# -- Usage -----------------------------------------------------------------------------------


def test_usage_defaults_to_zero() -> None:
    usage = Usage()
    assert (usage.input_tokens, usage.output_tokens, usage.requests, usage.tool_calls) == (
        0,
        0,
        0,
        0,
    )
    assert usage.total_tokens == 0


def test_usage_add_sums_every_field() -> None:
    a = Usage(input_tokens=1, output_tokens=2, requests=3, tool_calls=4)
    b = Usage(input_tokens=10, output_tokens=20, requests=30, tool_calls=40)
    total = a + b
    assert total == Usage(input_tokens=11, output_tokens=22, requests=33, tool_calls=44)
    assert total.total_tokens == 33
    assert a + Usage() == a
    assert sum([a, b, a], Usage()) == Usage(
        input_tokens=12, output_tokens=24, requests=36, tool_calls=48
    )


def test_usage_add_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        _ = Usage() + 1  # type: ignore[operator]


def test_usage_rejects_negative_counts_and_is_frozen() -> None:
    with pytest.raises(ValidationError):
        Usage(input_tokens=-1)
    usage = Usage(requests=1)
    with pytest.raises(ValidationError):
        usage.requests = 2  # type: ignore[misc]


def test_usage_from_pydantic_ai_run_usage() -> None:
    run_usage = RunUsage(input_tokens=120, output_tokens=30, requests=2, tool_calls=3)
    usage = Usage.from_pydantic_ai(run_usage)
    assert usage == Usage(input_tokens=120, output_tokens=30, requests=2, tool_calls=3)
    assert usage.total_tokens == 150
    assert Usage.from_pydantic_ai(RunUsage()) == Usage()


def test_usage_json_round_trip() -> None:
    usage = Usage(input_tokens=1, output_tokens=2, requests=3, tool_calls=4)
    assert Usage.model_validate_json(usage.model_dump_json()) == usage


def test_trusted_builds_equal_validated_models_and_keep_the_class() -> None:
    """The runtime's hot-path constructors make what validation would, of the class asked for."""
    from murmur._types import trusted_constructor
    from murmur.events import EventType, RuntimeEvent

    result = AgentResult._build("out", None, Usage(), 1, 0.5, "t1", "a")
    assert result == AgentResult(
        output="out", error=None, usage=Usage(), attempts=1, duration=0.5, task_id="t1", agent="a"
    )
    assert result.model_fields_set == set(AgentResult.model_fields)

    class Tagged(RuntimeEvent):
        pass

    args = (EventType.TASK_STARTED, "tr", "t1", None, "a", 0, 1, None, None, None, {})
    event = Tagged._build(*args)
    assert type(event) is Tagged
    assert type(RuntimeEvent._build(*args)) is RuntimeEvent
    assert RuntimeEvent.model_validate_json(event.model_dump_json()).task_id == "t1"
    assert trusted_constructor(Tagged) is trusted_constructor(Tagged)  # built once per class
