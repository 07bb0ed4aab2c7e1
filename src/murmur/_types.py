"""Plain data that crosses every boundary: TaskSpec in, AgentResult and Usage out."""

from __future__ import annotations

import functools
import os
import traceback as _traceback
from collections.abc import Callable
from typing import Any, Generic, Self, TypeVar, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from . import errors as _errors
from ._http import retry_hint
from .errors import InvalidValueError, RemoteAgentError

__all__ = ["AgentResult", "ErrorInfo", "TaskSpec", "Usage", "new_task_id"]

OutputT = TypeVar("OutputT")


def new_task_id() -> str:
    """A random 128-bit id in hex: unique across processes, cheaper to make than ``uuid4``."""
    return os.urandom(16).hex()


class TaskSpec(BaseModel):
    """One unit of work for an agent: its input plus an id and free-form metadata.

    ``input`` may be a ``str`` (handed to a pydantic-ai agent verbatim as the user prompt), a
    JSON-like value or a pydantic model (rendered as JSON for a pydantic-ai agent).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    input: Any
    task_id: str = Field(default_factory=new_task_id, min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)


class Usage(BaseModel):
    """Token and request counts of one task (summed over its attempts)."""

    model_config = ConfigDict(frozen=True)

    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    requests: int = Field(default=0, ge=0)
    tool_calls: int = Field(default=0, ge=0)

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens: what a ``TokenBudget`` charges."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage.model_construct(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            requests=self.requests + other.requests,
            tool_calls=self.tool_calls + other.tool_calls,
        )

    @classmethod
    def from_pydantic_ai(cls, usage: Any) -> Usage:
        """Convert pydantic-ai's ``RunUsage`` (or anything with the same attributes)."""
        return cls.model_construct(
            input_tokens=int(getattr(usage, "input_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "output_tokens", 0) or 0),
            requests=int(getattr(usage, "requests", 0) or 0),
            tool_calls=int(getattr(usage, "tool_calls", 0) or 0),
        )


ZERO_USAGE = Usage()


class ErrorInfo(BaseModel):
    """The JSON form of an exception: its type, message and formatted traceback."""

    model_config = ConfigDict(frozen=True)

    type: str
    message: str
    traceback: str | None = None
    #: The exception's classes, most derived first (``module.QualName``, up to but not
    #: including ``Exception``): what ``retry_on`` matches a remote failure by.
    kinds: tuple[str, ...] = ()
    #: The HTTP status the exception carried (a provider's 429 or 503), if any.
    status_code: int | None = None
    #: Seconds its response asked to wait (``Retry-After`` or a provider's rate-limit reset
    #: headers, read where it happened), if an HTTP error said. (Optional within wire
    #: version 1: a peer that does not know it ignores it, or sends none.)
    retry_after: float | None = None

    @classmethod
    def from_exception(cls, error: BaseException) -> ErrorInfo:
        """Describe ``error``; a ``RemoteAgentError`` keeps the remote type and traceback."""
        if isinstance(error, RemoteAgentError):
            return cls(
                type=error.type_name,
                message=error.message,
                traceback=error.remote_traceback,
                kinds=error.kinds,
                status_code=error.status_code,
                retry_after=error.retry_after,
            )
        kind = type(error)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else (f"{kind.__module__}.{kind.__qualname__}")
        )
        tb = "".join(_traceback.format_exception(error)) if error.__traceback__ else None
        kinds = tuple(
            _errors.qualified_name(base)
            for base in kind.__mro__
            if issubclass(base, BaseException) and base not in _ROOTS
        )
        status = getattr(error, "status_code", None)
        if not isinstance(status, int):
            status = None
        return cls(
            type=name,
            message=str(error),
            traceback=tb,
            kinds=kinds,
            status_code=status,
            retry_after=None if status is None else retry_hint(error),
        )

    def to_exception(self) -> Exception:
        """Rebuild the failure: Murmur's own task errors as themselves (so a remote timeout
        is still an ``AgentTimeoutError``, retried as one), anything else as a
        ``RemoteAgentError`` carrying the original type name, message and traceback."""
        own = _REBUILT.get(self.type)
        if own is None:
            return RemoteAgentError(
                self.type,
                self.message,
                self.traceback,
                kinds=self.kinds,
                status_code=self.status_code,
                retry_after=self.retry_after,
            )
        error = own(self.message)
        if self.traceback:
            error.add_note(f"murmur: raised in another process:\n{self.traceback}")
        return error


_ROOTS = frozenset({BaseException, Exception})

#: Murmur's task errors that carry nothing but their message, by the name ``ErrorInfo``
#: gives them: rebuilt as themselves when they come back from another process.
_REBUILT: dict[str, type[Exception]] = {
    f"{kind.__module__}.{kind.__qualname__}": kind
    for kind in (
        _errors.TaskCancelledError,
        _errors.AgentTimeoutError,
        _errors.BudgetExceededError,
        _errors.SpawnDepthExceededError,
        _errors.StrayCancellationError,
        _errors.UnknownAgentError,
        _errors.BrokerUnavailableError,
        _errors.DeadLetteredError,
    )
}


class AgentResult(BaseModel, Generic[OutputT]):
    """What one task produced: an output or an error (never both), plus usage and timing.

    Failures are data: ``error`` holds the exception instance the task ended with, and
    ``unwrap()`` re-raises it. An agent may legitimately return ``None``, so success is
    decided by ``error is None``, which is what ``is_ok()`` checks.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    output: OutputT | None = None
    error: Exception | None = None
    usage: Usage = ZERO_USAGE
    attempts: int = Field(default=1, ge=0)
    duration: float = Field(default=0.0, ge=0.0)
    task_id: str
    agent: str
    #: Seconds the task waited for its ``RateLimit``s, over all its attempts (part of
    #: ``duration``).
    rate_limit_wait: float = Field(default=0.0, ge=0.0)
    #: The worker that ran the task's last attempt, in distributed mode (its ``--name``);
    #: ``None`` when the task ran in this process or never reached a worker.
    worker: str | None = None

    def is_ok(self) -> bool:
        """True when the task succeeded (``error`` is ``None``)."""
        return self.error is None

    def unwrap(self) -> OutputT:
        """Return the output, or raise the task's error."""
        if self.error is not None:
            raise self.error
        return cast(OutputT, self.output)

    @classmethod
    def _build(
        cls,
        output: Any,
        error: Exception | None,
        usage: Usage,
        attempts: int,
        duration: float,
        task_id: str,
        agent: str,
        rate_limit_wait: float = 0.0,
        worker: str | None = None,
    ) -> AgentResult[Any]:
        """Trusted constructor for the hot path: the runtime's values need no validation.

        Equivalent to ``model_construct`` with every field given, at a fraction of its cost.
        """
        values = {
            "output": output,
            "error": error,
            "usage": usage,
            "attempts": attempts,
            "duration": duration,
            "task_id": task_id,
            "agent": agent,
            "rate_limit_wait": rate_limit_wait,
            "worker": worker,
        }
        return (_trusted_result if cls is AgentResult else trusted_constructor(cls))(values)

    @field_validator("error", mode="before")
    @classmethod
    def _rebuild_error(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return ErrorInfo.model_validate(value).to_exception()
        if isinstance(value, ErrorInfo):
            return value.to_exception()
        return value

    @field_serializer("error")
    def _serialise_error(self, error: Exception | None) -> dict[str, Any] | None:
        return None if error is None else ErrorInfo.from_exception(error).model_dump()

    @model_validator(mode="after")
    def _output_xor_error(self) -> Self:
        if self.error is not None and self.output is not None:
            raise InvalidValueError("an AgentResult has an output or an error, never both")
        return self


ModelT = TypeVar("ModelT", bound=BaseModel)


@functools.cache
def trusted_constructor(cls: type[ModelT]) -> Callable[[dict[str, Any]], ModelT]:
    """A builder of frozen ``cls`` models from values the runtime produced itself.

    What ``model_construct`` does when every field is given, skipping validation, at a
    fraction of its cost, for the hot path: it sets the instance slots through their
    descriptors, looked up once per class. The field set is shared by every instance:
    frozen models never mutate it.
    """
    fields = set(cls.model_fields)
    slots = BaseModel.__dict__
    set_dict = slots["__dict__"].__set__
    set_fields = slots["__pydantic_fields_set__"].__set__
    set_extra = slots["__pydantic_extra__"].__set__
    set_private = slots["__pydantic_private__"].__set__
    new = object.__new__

    def build(values: dict[str, Any]) -> ModelT:
        instance = new(cls)
        set_dict(instance, values)
        set_fields(instance, fields)
        set_extra(instance, None)
        set_private(instance, None)
        return instance

    return build


_trusted_result: Callable[[dict[str, Any]], AgentResult[Any]] = trusted_constructor(AgentResult)
