"""The wire format: versioned JSON messages between callers and workers (no pickle).

Three messages, told apart by ``kind``: a ``TaskMessage`` (one attempt, as the core's
``TaskEnvelope``, plus where to reply and the id to reply with), and on the way back a
``ResultMessage`` (the attempt's ``AgentResult``) and ``EventMessage``s (the events the
attempt reported), each carrying the same correlation id and the worker's identity.
Replies go to a per-caller reply address, matched by correlation id: no broker's RPC is
relied on (Kafka has none). A message of another version is refused, naming both.

Workers also hear a per-namespace control channel (every worker, not one of them): a
``CancelMessage`` revokes attempts by correlation id, and whole batches by the batch id
their envelopes carry (an optional field: a worker that predates it revokes the attempts
named); a ``ResendMessage`` asks for the results of attempts again (their replies may have
been lost). It is read with ``decode_control``, which passes over control kinds this
process does not know (a newer peer's), so a new kind needs no new wire version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import SchemaSerializer, from_json

from .._envelope import TaskEnvelope
from .._types import AgentResult, TaskSpec, Usage, trusted_constructor
from ..errors import InvalidValueError
from ..events.types import RuntimeEvent

__all__ = [
    "WIRE_VERSION",
    "CancelMessage",
    "EventMessage",
    "ResendMessage",
    "ResultMessage",
    "TaskMessage",
    "WireFormatError",
    "WireVersionError",
    "decode",
    "decode_control",
    "decode_reply",
    "decode_task",
    "encode",
    "encode_result",
]

_T = TypeVar("_T")

#: Bumped on any change an older peer could misread.
WIRE_VERSION: Literal[1] = 1


class WireFormatError(InvalidValueError):
    """A message is not a Murmur wire message (not JSON, or missing or malformed fields)."""


class WireVersionError(WireFormatError):
    """A message of a wire version this process does not speak."""


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: Literal[1] = WIRE_VERSION
    #: Matches a reply to the attempt it answers.
    correlation_id: str = Field(min_length=1)


class TaskMessage(_Message):
    """One attempt to run, and where its replies go."""

    kind: Literal["task"] = "task"
    envelope: TaskEnvelope
    reply_to: str = Field(min_length=1)


class ResultMessage(_Message):
    """The outcome of one attempt, from the worker that ran it."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    kind: Literal["result"] = "result"
    result: AgentResult[Any]
    worker: str = ""


class EventMessage(_Message):
    """An event an attempt reported, from the worker that ran it."""

    kind: Literal["event"] = "event"
    event: RuntimeEvent
    worker: str = ""


class CancelMessage(BaseModel):
    """On the control channel: a caller no longer waits for these attempts. A worker
    running one cancels it, and skips the others when they reach it."""

    model_config = ConfigDict(frozen=True)

    version: Literal[1] = WIRE_VERSION
    kind: Literal["cancel"] = "cancel"
    #: The revoked attempts (one message for all those cancelled together).
    correlation_ids: tuple[str, ...] = Field(min_length=1)
    #: Revoked batches: every attempt whose envelope carries one of these ``batch_id``s,
    #: named above or not (a batch cancelled as a whole; see ``Transport.revoke_batch``).
    batch_ids: tuple[str, ...] = ()
    #: The caller that sent them.
    caller: str = ""
    reason: str = ""
    #: Wall-clock time (as envelope deadlines) after which none of these attempts can
    #: start anywhere: a worker may forget them then. ``None``: one has no deadline.
    until: float | None = None


class ResendMessage(BaseModel):
    """On the control channel: a caller's replies may have been lost (its broker connection
    dropped, or it has waited long). A worker that sent the result of one of these attempts
    lately sends it again, to ``reply_to``; a worker running one replies when done anyway.
    (Workers of before this message pass it over.)"""

    model_config = ConfigDict(frozen=True)

    version: int = WIRE_VERSION
    kind: Literal["resend"] = "resend"
    #: The attempts whose results the caller still waits for.
    correlation_ids: tuple[str, ...] = Field(min_length=1)
    #: The caller's reply address: only results sent there are sent again.
    reply_to: str = Field(min_length=1)
    #: The caller that asks.
    caller: str = ""


Message = Annotated[TaskMessage | ResultMessage | EventMessage, Field(discriminator="kind")]
_messages: TypeAdapter[Message] = TypeAdapter(Message)
Control = Annotated[CancelMessage | ResendMessage, Field(discriminator="kind")]
_control: TypeAdapter[Control] = TypeAdapter(Control)
_version_only: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])
#: Serialises as a model's ``Any`` field does (NaN as null, a model's fields by name unless
#: its config says by alias).
_as_any: SchemaSerializer = TypeAdapter(Any).serializer


def encode(
    message: TaskMessage | ResultMessage | EventMessage | CancelMessage | ResendMessage,
) -> bytes:
    """The message as UTF-8 JSON."""
    return message.model_dump_json().encode()


def encode_result(result: AgentResult[Any], correlation_id: str, worker: str) -> bytes:
    """``encode(ResultMessage(result=result, correlation_id=..., worker=...))``, the same
    JSON, made without building the message (a worker sends one per task). A failed
    result goes through the models (its error is serialised by them).

    Raises:
        Exception: the output cannot be serialised as JSON (as ``encode`` would).
    """
    if result.error is not None:
        return encode(ResultMessage(result=result, worker=worker, correlation_id=correlation_id))
    usage = result.usage
    fields = {
        "version": WIRE_VERSION,
        "correlation_id": correlation_id,
        "kind": "result",
        "result": {
            "output": result.output,
            "error": None,
            "usage": {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "requests": usage.requests,
                "tool_calls": usage.tool_calls,
            },
            "attempts": result.attempts,
            "duration": result.duration,
            "task_id": result.task_id,
            "agent": result.agent,
            "rate_limit_wait": result.rate_limit_wait,
            "worker": result.worker,
        },
        "worker": worker,
    }
    # As a model's Any field is serialised (``to_json`` would differ: aliases everywhere).
    return _as_any.to_json(fields)


def decode(data: bytes | str) -> TaskMessage | ResultMessage | EventMessage:
    """Parse a wire message (of a task or reply channel).

    Raises:
        WireVersionError: it is of another wire version.
        WireFormatError: it is not a Murmur wire message.
    """
    try:
        return _messages.validate_json(data)  # the usual case: one pass over the bytes
    except ValidationError:
        pass  # said precisely below: another version, or what is wrong with it
    return _validated(_versioned(data), _messages)


def decode_task(data: bytes | str) -> TaskMessage | ResultMessage | EventMessage:
    """Parse a message of a task channel: ``decode``, with a fast path for the usual one,
    a task message with every field there and as the models take it (read and checked
    field by field: a worker reads one per task).

    Raises:
        WireVersionError: it is of another wire version.
        WireFormatError: it is not a Murmur wire message.
    """
    plain = _read_plain(data, "task", _plain_task)
    return plain if plain is not None else decode(data)


def _read_plain(
    data: bytes | str, kind: str, read: Callable[[dict[str, Any]], _T | None]
) -> _T | None:
    """What ``read`` makes of ``data``'s fields when it is a JSON object of ``kind``;
    ``None`` for anything else (left to ``decode``, which says what is wrong with it)."""
    try:
        fields = from_json(data)
    except ValueError:
        return None
    if type(fields) is dict and fields.get("kind") == kind:
        return read(fields)
    return None


_trusted_task_message: Callable[[dict[str, Any]], TaskMessage] = trusted_constructor(TaskMessage)
_trusted_envelope: Callable[[dict[str, Any]], TaskEnvelope] = trusted_constructor(TaskEnvelope)
_trusted_spec: Callable[[dict[str, Any]], TaskSpec] = trusted_constructor(TaskSpec)
#: The fields in the models' order (as a caller sends them): a message in another order is
#: read by the models, which keep theirs.
_TASK_MESSAGE_KEYS = tuple(TaskMessage.model_fields)
_ENVELOPE_KEYS = tuple(TaskEnvelope.model_fields)
_SPEC_KEYS = tuple(TaskSpec.model_fields)
_OPTIONAL_TEXT = ("call_id", "parent_call_id", "batch_id", "parent_task_id")
_OPTIONAL_COUNTS = ("token_cap", "max_spawn_depth")


def _plain_task(fields: dict[str, Any]) -> TaskMessage | None:
    """The ``TaskMessage`` of ``fields`` if every field is there and as the models would
    take it; ``None`` for anything else (read by the models, then)."""
    envelope = fields.get("envelope")
    reply_to = fields.get("reply_to")
    correlation_id = fields.get("correlation_id")
    if (
        tuple(fields) != _TASK_MESSAGE_KEYS
        or fields["version"] != WIRE_VERSION
        or type(fields["version"]) is not int
        or type(correlation_id) is not str
        or not correlation_id
        or type(reply_to) is not str
        or not reply_to
        or type(envelope) is not dict
        or tuple(envelope) != _ENVELOPE_KEYS
    ):
        return None
    task = envelope["task"]
    agent = envelope["agent"]
    attempt = envelope["attempt"]
    depth = envelope["depth"]
    deadline = envelope["deadline"]
    wants = envelope["wants"]
    trace = envelope["trace_context"]
    if (
        type(envelope["version"]) is not int
        or type(agent) is not str
        or not agent
        or type(envelope["trace_id"]) is not str
        or type(attempt) is not int
        or attempt < 1
        or type(depth) is not int
        or depth < 0
        or (deadline is not None and type(deadline) is not float)
        or type(wants) is not list
        or not all(type(name) is str for name in wants)
        or type(trace) is not dict
        or not all(type(value) is str for value in trace.values())
        or any(not (v is None or type(v) is str) for v in map(envelope.get, _OPTIONAL_TEXT))
        or any(not (v is None or type(v) is int) for v in map(envelope.get, _OPTIONAL_COUNTS))
        or type(task) is not dict
        or tuple(task) != _SPEC_KEYS
        or type(task["task_id"]) is not str
        or not task["task_id"]
        or type(task["metadata"]) is not dict
    ):
        return None
    return _trusted_task_message(
        {
            "version": WIRE_VERSION,
            "correlation_id": correlation_id,
            "kind": "task",
            "envelope": _trusted_envelope(
                {**envelope, "task": _trusted_spec(task), "wants": frozenset(wants)}
            ),
            "reply_to": reply_to,
        }
    )


def decode_reply(data: bytes | str) -> TaskMessage | ResultMessage | EventMessage:
    """Parse a message of a reply channel: ``decode``, with a fast path for the usual
    one, a successful result (read and checked field by field, with none of the models'
    validation machinery: a caller reads one per task). A result's ``AgentResult`` names
    the worker that sent it (``worker``) unless it names one already.

    Raises:
        WireVersionError: it is of another wire version.
        WireFormatError: it is not a Murmur wire message.
    """
    plain = _read_plain(data, "result", _plain_result)
    if plain is not None:
        return plain
    message = decode(data)
    if isinstance(message, ResultMessage) and message.worker and message.result.worker is None:
        result = message.result.model_copy(update={"worker": message.worker})
        message = _trusted_result_message({**message.__dict__, "result": result})
    return message


_trusted_result_message: Callable[[dict[str, Any]], ResultMessage] = trusted_constructor(
    ResultMessage
)
_trusted_usage: Callable[[dict[str, Any]], Usage] = trusted_constructor(Usage)
_RESULT_MESSAGE_KEYS = frozenset(ResultMessage.model_fields)
_RESULT_KEYS = frozenset(AgentResult.model_fields)
_USAGE_KEYS = frozenset(Usage.model_fields)


def _plain_result(fields: dict[str, Any]) -> ResultMessage | None:
    """The ``ResultMessage`` of a successful result whose every field is there and as the
    models would take it; ``None`` for anything else (read by the models, then)."""
    result = fields.get("result")
    correlation_id = fields.get("correlation_id")
    worker = fields.get("worker")
    if (
        fields.keys() != _RESULT_MESSAGE_KEYS
        or fields["version"] != WIRE_VERSION
        or type(correlation_id) is not str
        or not correlation_id
        or type(worker) is not str
        or type(result) is not dict
        or result.keys() != _RESULT_KEYS
        or result["error"] is not None
    ):
        return None
    usage = result["usage"]
    attempts = result["attempts"]
    duration = result["duration"]
    waited = result["rate_limit_wait"]
    task_id = result["task_id"]
    agent = result["agent"]
    ran_on = result["worker"]
    if (
        type(usage) is not dict
        or usage.keys() != _USAGE_KEYS
        or not all(type(count) is int and count >= 0 for count in usage.values())
        or type(attempts) is not int
        or attempts < 0
        or type(duration) not in (int, float)
        or not duration >= 0
        or type(waited) not in (int, float)
        or not waited >= 0
        or type(task_id) is not str
        or type(agent) is not str
        or (ran_on is not None and type(ran_on) is not str)
    ):
        return None
    try:
        seconds, waited_seconds = float(duration), float(waited)
    except OverflowError:  # an int past a float's range (the models read it as inf)
        return None
    built = AgentResult._build(
        result["output"],
        None,
        _trusted_usage(dict(usage)),
        attempts,
        seconds,
        task_id,
        agent,
        waited_seconds,
        ran_on if ran_on is not None else (worker or None),
    )
    return _trusted_result_message(
        {
            "version": WIRE_VERSION,
            "correlation_id": correlation_id,
            "kind": "result",
            "result": built,
            "worker": worker,
        }
    )


def decode_control(data: bytes | str) -> CancelMessage | ResendMessage | None:
    """Parse a control-channel message; ``None`` for a kind this process does not know
    (a newer peer's: to be ignored).

    Raises:
        WireVersionError: it is of another wire version.
        WireFormatError: it is not a Murmur wire message.
    """
    fields = _versioned(data)
    if fields.get("kind") not in ("cancel", "resend"):
        return None
    return _validated(fields, _control)


def _versioned(data: bytes | str) -> dict[str, Any]:
    try:
        fields = _version_only.validate_json(data)
    except ValidationError as exc:
        raise WireFormatError(f"not a Murmur wire message (not a JSON object): {exc}") from None
    version = fields.get("version")
    if version != WIRE_VERSION:
        raise WireVersionError(
            f"a Murmur wire message of version {version!r}; this process speaks version "
            f"{WIRE_VERSION}: run callers and workers of compatible Murmur versions"
        )
    return fields


def _validated(fields: dict[str, Any], adapter: TypeAdapter[_T]) -> _T:
    try:
        return adapter.validate_python(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '<message>'}: {e['msg']}"
            for e in exc.errors(include_url=False)[:3]
        )
        raise WireFormatError(f"a malformed Murmur wire message: {problems}") from None
