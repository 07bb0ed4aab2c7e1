"""The wire format: versioned JSON messages that round-trip, and clear refusals."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from collections.abc import Callable

import pytest
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from murmur import (
    AgentResult,
    AgentTimeoutError,
    EventType,
    RemoteAgentError,
    RuntimeEvent,
    TaskSpec,
    Usage,
)
from murmur.distributed._wire import (
    WIRE_VERSION,
    CancelMessage,
    EventMessage,
    ResendMessage,
    ResultMessage,
    TaskMessage,
    WireFormatError,
    WireVersionError,
    decode,
    decode_control,
    decode_reply,
    decode_task,
    encode,
    encode_result,
)
from murmur.transport import TaskEnvelope


def task_message() -> TaskMessage:
    envelope = TaskEnvelope(
        agent="researcher",
        task=TaskSpec(input={"q": "why"}, task_id="t1", metadata={"k": 1}),
        attempt=2,
        trace_id="trace",
        call_id="call",
        depth=1,
        deadline=1_700_000_000.5,
        token_cap=4096,
        wants=frozenset({"task.failed", "task.succeeded"}),
    )
    return TaskMessage(correlation_id="c1", envelope=envelope, reply_to="replies.caller-1")


def test_a_task_message_round_trips_as_versioned_json() -> None:
    message = task_message()
    data = encode(message)
    assert json.loads(data)["version"] == WIRE_VERSION
    assert json.loads(data)["kind"] == "task"
    assert decode(data) == message


def test_a_result_round_trips_with_its_output_and_usage() -> None:
    result = AgentResult[object]._build(
        {"answer": 42}, None, Usage(input_tokens=3, output_tokens=4), 2, 0.5, "t1", "researcher"
    )
    back = decode(encode(ResultMessage(correlation_id="c1", result=result, worker="w-1")))
    assert isinstance(back, ResultMessage)
    assert (back.result.output, back.result.usage.total_tokens, back.result.attempts) == (
        {"answer": 42},
        7,
        2,
    )
    assert back.worker == "w-1"


def test_errors_cross_as_their_type_or_as_a_remote_error_naming_it() -> None:
    def crossed(error: Exception) -> Exception | None:
        result = AgentResult[object]._build(None, error, Usage(), 1, 0.1, "t1", "a")
        back = decode(encode(ResultMessage(correlation_id="c", result=result)))
        assert isinstance(back, ResultMessage)
        return back.result.error

    timeout = crossed(AgentTimeoutError("attempt 1 timed out"))
    assert isinstance(timeout, AgentTimeoutError)  # retried as a timeout on the caller
    assert "attempt 1 timed out" in str(timeout)
    mine = crossed(KeyError("missing"))
    assert isinstance(mine, RemoteAgentError)
    assert mine.type_name == "KeyError"
    assert "missing" in mine.message


def test_an_event_round_trips() -> None:
    event = RuntimeEvent(
        type=EventType.TASK_FAILED,
        trace_id="trace",
        task_id="t1",
        agent="researcher",
        attempt=1,
        data={"worker": "w-1"},
    )
    back = decode(encode(EventMessage(correlation_id="c1", event=event, worker="w-1")))
    assert isinstance(back, EventMessage)
    assert back.event == event


def test_another_version_is_refused_naming_both_versions() -> None:
    data = json.loads(encode(task_message()))
    data["version"] = WIRE_VERSION + 1
    with pytest.raises(WireVersionError, match=rf"version {WIRE_VERSION + 1}.*speaks version 1"):
        decode(json.dumps(data))


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"not json", "not a JSON object"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"version": WIRE_VERSION, "kind": "task"}), "correlation_id"),
        (json.dumps({"version": WIRE_VERSION, "kind": "gossip", "correlation_id": "c"}), "kind"),
    ],
)
def test_a_malformed_message_is_refused_saying_what_is_wrong(data: bytes | str, says: str) -> None:
    with pytest.raises(WireFormatError, match=says):
        decode(data)


def test_a_cancel_message_round_trips_on_the_control_channel() -> None:
    message = CancelMessage(
        correlation_ids=("c1", "c2"), caller="caller-1", reason="cancelled", until=1.5
    )
    data = encode(message)
    assert json.loads(data)["kind"] == "cancel"
    assert decode_control(data) == message


def test_a_resend_message_round_trips_on_the_control_channel() -> None:
    message = ResendMessage(correlation_ids=("c1", "c2"), reply_to="ns.reply.c", caller="c")
    data = encode(message)
    assert json.loads(data)["kind"] == "resend"
    assert decode_control(data) == message
    for missing in ({"correlation_ids": []}, {"reply_to": ""}):
        fields = {**json.loads(data), **missing}
        with pytest.raises(WireFormatError, match="malformed"):
            decode_control(json.dumps(fields))


def test_a_control_message_of_a_kind_not_known_here_is_passed_over() -> None:
    newer = {"version": WIRE_VERSION, "kind": "pause", "correlation_ids": ["c1"]}
    assert decode_control(json.dumps(newer)) is None


def test_a_cancel_message_is_no_task_or_reply_and_needs_ids() -> None:
    data = encode(CancelMessage(correlation_ids=("c1",)))
    with pytest.raises(WireFormatError, match="malformed"):
        decode(data)  # on a task or reply channel: refused, as any stranger
    empty = {"version": WIRE_VERSION, "kind": "cancel", "correlation_ids": []}
    with pytest.raises(WireFormatError, match="malformed"):
        decode_control(json.dumps(empty))
    with pytest.raises(WireVersionError):
        decode_control(json.dumps({**empty, "version": WIRE_VERSION + 1}))


def test_batch_ids_are_optional_both_ways_within_wire_version_1() -> None:
    # A batch id travels in the envelope and in a cancel; a peer that predates them sends
    # neither (read as none here), and one that postdates them is read without error by
    # a process that ignores fields it does not know.
    message = task_message()
    fields = json.loads(encode(message))
    assert fields["envelope"]["batch_id"] is None
    del fields["envelope"]["batch_id"]
    assert decode(json.dumps(fields)) == message
    batched = message.model_copy(
        update={"envelope": message.envelope.model_copy(update={"batch_id": "b1"})}
    )
    assert decode(encode(batched)).envelope.batch_id == "b1"

    cancel = CancelMessage(correlation_ids=("c1",), batch_ids=("b1",))
    assert decode_control(encode(cancel)) == cancel
    older = {"version": WIRE_VERSION, "kind": "cancel", "correlation_ids": ["c1"]}
    assert decode_control(json.dumps(older)) == CancelMessage(correlation_ids=("c1",))
    newer = {**older, "batch_ids": ["b1"], "a_later_field": [1]}
    back = decode_control(json.dumps(newer))
    assert back is not None
    assert back.batch_ids == ("b1",)


def _reply(result: AgentResult[object], worker: str = "w1") -> bytes:
    return encode(ResultMessage(correlation_id="c1", result=result, worker=worker))


def _outcome(read: Callable[[bytes], object], data: bytes) -> object:
    """What ``read`` makes of ``data``, or the type of the wire error it raises."""
    try:
        return read(data)
    except WireFormatError as exc:
        return type(exc)


def _read_by_the_models(data: bytes) -> object:
    """What ``decode`` makes of ``data`` (the result naming its worker), or the error type."""
    try:
        message = decode(data)
    except WireFormatError as exc:
        return type(exc)
    if isinstance(message, ResultMessage) and message.result.worker is None and message.worker:
        result = message.result.model_copy(update={"worker": message.worker})
        return message.model_copy(update={"result": result})
    return message


@pytest.mark.parametrize(
    "output", [None, "text", 42, 1.5, True, ["a", 1], {"answer": {"nested": [1, 2]}}]
)
@pytest.mark.parametrize("worker", ["w1", ""])
def test_a_reply_reads_as_the_models_read_it(output: object, worker: str) -> None:
    result = AgentResult[object]._build(
        output, None, Usage(input_tokens=3, output_tokens=4, requests=1), 2, 0.25, "t1", "a"
    )
    data = _reply(result, worker)
    assert decode_reply(data) == _read_by_the_models(data)
    assert decode_reply(data).result.worker == (worker or None)  # type: ignore[union-attr]


def test_a_reply_that_names_its_worker_in_the_result_keeps_it() -> None:
    result = AgentResult[object]._build(1, None, Usage(), 1, 0.0, "t1", "a", worker="w0")
    message = decode_reply(_reply(result, "w1"))
    assert isinstance(message, ResultMessage)
    assert message.result.worker == "w0"


def test_a_failed_result_or_an_event_reads_as_the_models_read_it() -> None:
    failed = AgentResult[object]._build(None, AgentTimeoutError("slow"), Usage(), 1, 0.5, "t1", "a")
    data = _reply(failed)
    message = decode_reply(data)
    assert isinstance(message, ResultMessage)
    assert isinstance(message.result.error, AgentTimeoutError)
    assert message.result.worker == "w1"
    event = EventMessage(
        correlation_id="c1",
        event=RuntimeEvent(type=EventType.TASK_STARTED, agent="a", task_id="t1"),
        worker="w1",
    )
    assert decode_reply(encode(event)) == decode(encode(event))


def _mutated(change: str) -> bytes:
    fields = json.loads(
        _reply(AgentResult[object]._build("x", None, Usage(requests=1), 1, 0.5, "t1", "a"))
    )
    result = fields["result"]
    if change == "extra field":
        fields["more"] = 1
    elif change == "missing worker":
        del fields["worker"]
    elif change == "version 2":
        fields["version"] = 2
    elif change == "empty correlation id":
        fields["correlation_id"] = ""
    elif change == "attempts a bool":
        result["attempts"] = True
    elif change == "attempts a string":
        result["attempts"] = "1"
    elif change == "attempts negative":
        result["attempts"] = -1
    elif change == "duration negative":
        result["duration"] = -0.5
    elif change == "duration an int":
        result["duration"] = 2
    elif change == "usage negative":
        result["usage"]["requests"] = -1
    elif change == "usage short":
        del result["usage"]["tool_calls"]
    elif change == "task id a number":
        result["task_id"] = 7
    elif change == "result extra field":
        result["extra"] = True
    elif change == "output and error":
        result["error"] = {"type": "AgentTimeoutError", "message": "slow"}
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    "change",
    [
        "extra field",
        "missing worker",
        "version 2",
        "empty correlation id",
        "attempts a bool",
        "attempts a string",
        "attempts negative",
        "duration negative",
        "duration an int",
        "usage negative",
        "usage short",
        "task id a number",
        "result extra field",
        "output and error",
    ],
)
def test_a_reply_off_the_usual_shape_reads_as_the_models_read_it(change: str) -> None:
    """The fast path takes only what the models would take, and as they would: anything
    else is read (or refused) by the models themselves."""
    data = _mutated(change)
    assert _outcome(decode_reply, data) == _read_by_the_models(data)


def test_a_reply_that_is_not_json_is_refused() -> None:
    with pytest.raises(WireFormatError, match="not a Murmur wire message"):
        decode_reply(b"{not json")


def _edged(change: str) -> bytes:
    """A successful result's reply, with one field at an edge the models take."""
    fields = json.loads(
        _reply(AgentResult[object]._build("x", None, Usage(requests=1), 1, 0.5, "t1", "a"))
    )
    result = fields["result"]
    text = ""
    if change == "duration a huge int":
        result["duration"] = 10**400  # the models read it as inf
    elif change == "wait a huge int":
        result["rate_limit_wait"] = 10**400
    elif change == "duration past a float's range":
        text = "1e999"
        result["duration"] = "DURATION"
    elif change == "version 1.0":
        fields["version"] = 1.0
    elif change == "version true":
        fields["version"] = True
    elif change == "output a huge int":
        result["output"] = 10**400
    elif change == "usage a huge int":
        result["usage"]["input_tokens"] = 10**400
    elif change == "unicode ids":
        fields["correlation_id"] = "c\u00e9\U0001f642"
        result["task_id"] = "t\u2028"
    elif change == "result's worker empty":
        result["worker"] = ""
    data = json.dumps(fields, ensure_ascii=False)
    if text:
        data = data.replace('"DURATION"', text)
    return data.encode()


@pytest.mark.parametrize(
    "change",
    [
        "duration a huge int",
        "wait a huge int",
        "duration past a float's range",
        "version 1.0",
        "version true",
        "output a huge int",
        "usage a huge int",
        "unicode ids",
        "result's worker empty",
    ],
)
def test_a_reply_at_the_edges_the_models_take_reads_as_they_read_it(change: str) -> None:
    """Numbers past a float's range, versions JSON writes otherwise, non-ASCII text: the
    fast path reads them as the models do, or leaves them to the models; it never raises
    what the models would not (a reply handler must not fail on a reply)."""
    data = _edged(change)
    assert _outcome(decode_reply, data) == _read_by_the_models(data)


class _Point(BaseModel):
    x: int
    at: datetime.datetime


@dataclasses.dataclass
class _Pair:
    left: float
    right: str


@pytest.mark.parametrize(
    "output",
    [
        None,
        "text",
        7,
        2.5,
        math.inf,
        math.nan,
        ["a", 1, None],
        {"nested": {"list": [1, 2.0]}},
        (1, 2),
        b"bytes",
        datetime.date(2026, 11, 30),
        _Point(x=1, at=datetime.datetime(2026, 11, 30, 8, 0)),
        _Pair(1.5, "r"),
    ],
)
def test_a_result_is_encoded_as_the_models_encode_it(output: object) -> None:
    result = AgentResult[object]._build(
        output, None, Usage(input_tokens=2, tool_calls=1), 3, 0.75, "t1", "a", 0.25, "w0"
    )
    fast = encode_result(result, "c1", "w1")
    slow = encode(ResultMessage(result=result, worker="w1", correlation_id="c1"))
    assert json.loads(fast) == json.loads(slow)
    assert decode_reply(fast) == decode(slow)


def test_a_failed_result_is_encoded_by_the_models() -> None:
    failed = AgentResult[object]._build(None, AgentTimeoutError("slow"), Usage(), 1, 0.5, "t", "a")
    data = encode_result(failed, "c1", "w1")
    assert data == encode(ResultMessage(result=failed, worker="w1", correlation_id="c1"))


def test_an_output_that_is_not_json_fails_to_encode_as_with_the_models() -> None:
    result = AgentResult[object]._build(object(), None, Usage(), 1, 0.5, "t", "a")
    with pytest.raises(Exception, match="serialize"):
        encode(ResultMessage(result=result, worker="w1", correlation_id="c1"))
    with pytest.raises(Exception, match="serialize"):
        encode_result(result, "c1", "w1")


def _envelope_variant(change: str) -> bytes:
    fields = json.loads(encode(task_message()))
    envelope = fields["envelope"]
    if change == "as sent":
        pass
    elif change == "no deadline, no cap":
        envelope["deadline"] = None
        envelope["token_cap"] = None
    elif change == "deadline an int":
        envelope["deadline"] = 1_700_000_000
    elif change == "attempt 0":
        envelope["attempt"] = 0
    elif change == "attempt a bool":
        envelope["attempt"] = True
    elif change == "depth negative":
        envelope["depth"] = -1
    elif change == "agent empty":
        envelope["agent"] = ""
    elif change == "wants a string":
        envelope["wants"] = "task.failed"
    elif change == "wants a number in it":
        envelope["wants"] = ["task.failed", 3]
    elif change == "trace context a number":
        envelope["trace_context"] = {"traceparent": 1}
    elif change == "batch id a number":
        envelope["batch_id"] = 5
    elif change == "token cap a float":
        envelope["token_cap"] = 1.5
    elif change == "task id empty":
        envelope["task"]["task_id"] = ""
    elif change == "metadata a list":
        envelope["task"]["metadata"] = []
    elif change == "task extra field":
        envelope["task"]["more"] = 1
    elif change == "envelope missing a field":
        del envelope["trace_context"]
    elif change == "reply_to empty":
        fields["reply_to"] = ""
    elif change == "version 2":
        fields["version"] = 2
    elif change == "version true":
        fields["version"] = True
    elif change == "a list input and unicode":
        envelope["task"]["input"] = ["é", {"ü": None}]
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    "change",
    [
        "as sent",
        "no deadline, no cap",
        "deadline an int",
        "attempt 0",
        "attempt a bool",
        "depth negative",
        "agent empty",
        "wants a string",
        "wants a number in it",
        "trace context a number",
        "batch id a number",
        "token cap a float",
        "task id empty",
        "metadata a list",
        "task extra field",
        "envelope missing a field",
        "reply_to empty",
        "version 2",
        "version true",
        "a list input and unicode",
    ],
)
def test_a_task_reads_as_the_models_read_it(change: str) -> None:
    """The worker's fast path takes only what the models would take, and as they would:
    anything else is read (or refused) by the models themselves."""
    data = _envelope_variant(change)
    assert _outcome(decode_task, data) == _outcome(decode, data)


def test_the_usual_task_and_result_take_the_fast_paths() -> None:
    from murmur.distributed._wire import _plain_result, _plain_task

    assert _plain_task(json.loads(_envelope_variant("as sent"))) is not None
    assert _plain_task(json.loads(_envelope_variant("no deadline, no cap"))) is not None
    result = AgentResult[object]._build("x", None, Usage(requests=1), 1, 0.5, "t1", "a")
    assert _plain_result(json.loads(_reply(result))) is not None


class _Aliased(BaseModel):
    """An output model with an alias (read by it, written by name unless asked)."""

    first_name: str = Field(alias="firstName")


class _Renamed(BaseModel):
    """An output model written under another name only when asked for aliases."""

    first_name: str = Field(serialization_alias="name")


class _AliasedByConfig(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)

    first_name: str = Field(alias="firstName")


@pytest.mark.parametrize(
    "output",
    [
        _Aliased(firstName="Ada"),
        _Renamed(first_name="Ada"),
        _AliasedByConfig(firstName="Ada"),
        {"people": [_Aliased(firstName="Ada"), _AliasedByConfig(firstName="Bo")]},
    ],
    ids=["alias", "serialization alias", "alias by config", "nested"],
)
def test_a_result_with_aliased_fields_is_encoded_byte_for_byte_as_the_models_encode_it(
    output: object,
) -> None:
    """``encode_result`` writes the very bytes ``encode(ResultMessage(...))`` writes: a
    model's fields by name unless its own config says by alias (as ``model_dump_json``),
    not by alias everywhere (``pydantic_core.to_json``'s default)."""
    result = AgentResult[object]._build(output, None, Usage(requests=1), 1, 0.5, "t1", "a")
    slow = encode(ResultMessage(result=result, worker="w1", correlation_id="c1"))
    assert encode_result(result, "c1", "w1") == slow


def test_an_output_with_a_serialization_alias_comes_back_as_its_model() -> None:
    """Written by alias, a serialization alias would not read back: the caller would get
    a dict where the agent declared the model."""
    result = AgentResult[object]._build(_Renamed(first_name="Ada"), None, Usage(), 1, 0.5, "t", "a")
    message = decode_reply(encode_result(result, "c1", "w1"))
    assert isinstance(message, ResultMessage)
    assert TypeAdapter(_Renamed).validate_python(message.result.output) == _Renamed(
        first_name="Ada"
    )


def test_a_task_with_its_fields_in_another_order_reads_as_the_models_read_it() -> None:
    """The fast path keeps the models' field order (their dumps and reprs follow it)."""
    fields = json.loads(encode(task_message()))
    fields["envelope"]["task"] = dict(reversed(fields["envelope"]["task"].items()))
    fields["envelope"] = dict(reversed(fields["envelope"].items()))
    data = json.dumps(dict(reversed(fields.items()))).encode()
    got, expected = decode_task(data), decode(data)
    assert got == expected
    assert got.model_dump_json() == expected.model_dump_json()
    assert repr(got) == repr(expected)
