"""Murmur's exceptions.

The whole hierarchy::

    MurmurError
    ├── AgentError ─────────────────── something went wrong running one task
    │   ├── InputValidationError ───── the task input failed the agent's ``input_type``
    │   ├── TaskCancelledError ─────── the task was cancelled by its batch (``fail_fast``)
    │   ├── AgentTimeoutError ──────── an attempt ran past ``timeout_seconds`` (a ``TimeoutError``)
    │   ├── BudgetExceededError ────── the shared ``TokenBudget`` is spent
    │   ├── BudgetStoreError ───────── a budget's store is down, closed (``ConnectionError``)
    │   ├── RateLimitError ─────────── a call can never fit a ``RateLimit`` (more than its tpm)
    │   ├── RateLimitStoreError ────── a limit's store is down, closed (``ConnectionError``)
    │   ├── SpawnDepthExceededError ── a spawn went deeper than ``max_spawn_depth``
    │   ├── StrayCancellationError ─── the agent got a cancellation its own task was not sent
    │   ├── UnknownAgentError ──────── an executor was asked for an agent it does not serve
    │   ├── DeadLetteredError ──────── a worker set the task's message aside as a dead letter
    │   └── RemoteAgentError ───────── a failure that happened in another process
    ├── InvalidValueError ──────────── an argument's value is not accepted (a ``ValueError``)
    │   └── TopologyError ──────────── an ``AgentGroup`` topology is invalid
    ├── UnknownNodeError ───────────── an ``AgentGroup`` has no node of that name (``KeyError``)
    ├── InvalidTypeError ───────────── an argument is of the wrong type (a ``TypeError``)
    ├── InvalidStateError ──────────── not allowed in this state (a ``RuntimeError``)
    │   └── RuntimeClosedError ─────── the runtime was used after ``aclose()``
    ├── NoTaskContextError ─────────── ``current_context()`` outside a task (a ``LookupError``)
    ├── MissingDependencyError ─────── an optional package is missing (``ModuleNotFoundError``)
    └── NotAvailableError ──────────── not in this version (a ``NotImplementedError``)

Every exception Murmur raises is a ``MurmurError``, and also the builtin a Python
programmer would expect (``except ValueError`` still catches a bad argument). The
exceptions: pydantic's ``ValidationError`` from the models' own validation
(``RuntimeOptions(...)``, ``TaskSpec(...)``), raised as pydantic raises it, and Python's
protocol errors (``AttributeError`` on an immutable ``Edge``, ``KeyError`` from a mapping).

Failures of the user's own agent code are not wrapped: ``AgentResult.error`` holds the
exception the agent raised. Murmur's own refusals and the runtime's failures are the
classes above. Cancellation is never turned into an exception of this tree.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AgentError",
    "AgentTimeoutError",
    "BrokerUnavailableError",
    "BudgetExceededError",
    "BudgetStoreError",
    "DeadLetteredError",
    "InputValidationError",
    "InvalidStateError",
    "InvalidTypeError",
    "InvalidValueError",
    "MissingDependencyError",
    "MurmurError",
    "NoTaskContextError",
    "NotAvailableError",
    "RateLimitError",
    "RateLimitStoreError",
    "RemoteAgentError",
    "RuntimeClosedError",
    "SpawnDepthExceededError",
    "StrayCancellationError",
    "TaskCancelledError",
    "TopologyError",
    "UnknownAgentError",
    "UnknownNodeError",
]


class MurmurError(Exception):
    """Root of every exception Murmur raises (see the module docstring for the two kinds
    of exceptions that are not Murmur's own)."""


class AgentError(MurmurError):
    """A failure of one task, reported in its ``AgentResult.error``."""


class InputValidationError(AgentError, ValueError):
    """The task's input did not validate against the agent's ``input_type``."""

    def __init__(self, agent: str, errors: list[dict[str, Any]]) -> None:
        self.agent = agent
        self.errors = errors
        super().__init__(f"input for agent {agent!r} failed validation: {_summarise(errors)}")


class TaskCancelledError(AgentError):
    """The task was cancelled by its batch (``fail_fast``) before it could finish."""


class AgentTimeoutError(AgentError, TimeoutError):
    """An attempt ran longer than the configured ``timeout_seconds``."""


class BudgetExceededError(AgentError):
    """The shared ``TokenBudget`` is spent, or a run hit the cap it reserved."""


class BudgetStoreError(AgentError, ConnectionError):
    """A ``TokenBudget``'s store (Redis) could not be reached in time and the budget fails
    closed (``on_store_error="closed"``); the URL shown has no password."""


class RateLimitError(AgentError):
    """A call can never be admitted by a ``RateLimit``: its estimated tokens exceed the tpm."""


class RateLimitStoreError(AgentError, ConnectionError):
    """A ``RateLimit``'s store (Redis) could not be reached in time and the limit fails
    closed (``on_store_error="closed"``); the URL shown has no password."""


class SpawnDepthExceededError(AgentError):
    """A spawn would run deeper than ``max_spawn_depth``."""


class StrayCancellationError(AgentError):
    """The agent received a cancellation that no cancel scope of its own task delivered.

    An agent awaiting a future or task that someone else cancelled (a shared in-flight
    request, a single-flight cache, an ``asyncio.shield``-ed call) gets
    ``asyncio.CancelledError`` without being cancelled itself. That is a failure of this one
    task, never a cancellation of its batch; ``__cause__`` holds the original exception.
    """


class UnknownAgentError(AgentError, LookupError):
    """An executor was asked to run an agent name it has not registered."""


class DeadLetteredError(AgentError):
    """A worker set the task's message aside as a dead letter instead of running it (it
    could not be read, or it was delivered more often than the worker's delivery limit);
    the message names the reason. ``murmur dlq replay`` can queue it again."""


class RemoteAgentError(AgentError):
    """A failure that happened in another process, rebuilt from its type, message and traceback.

    ``kinds`` names the original exception's classes (``"builtins.ConnectionError"``,
    ``"builtins.OSError"``, ...), so that ``retry_on`` and the default retry rule judge it
    as they would the original; ``status_code`` is the HTTP status it carried, if any, and
    ``retry_after`` the seconds its response asked to wait (``Retry-After`` or a provider's
    reset headers, read where it happened), if it said.
    """

    def __init__(
        self,
        type_name: str,
        message: str,
        traceback: str | None = None,
        *,
        kinds: tuple[str, ...] = (),
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.type_name = type_name
        self.message = message
        self.remote_traceback = traceback
        self.kinds = kinds
        self.status_code = status_code
        self.retry_after = retry_after
        super().__init__(f"{type_name}: {message}")

    def is_a(self, kind: type[BaseException]) -> bool:
        """Whether the original exception was an instance of ``kind`` (by class name)."""
        return qualified_name(kind) in self.kinds


def qualified_name(kind: type[BaseException]) -> str:
    """``module.QualName`` of an exception class (``builtins.`` included)."""
    return f"{kind.__module__}.{kind.__qualname__}"


class InvalidValueError(MurmurError, ValueError):
    """An argument's value is not accepted; the message names the argument and what is."""


class InvalidTypeError(MurmurError, TypeError):
    """An argument is of the wrong type; the message names the argument and what is."""


class InvalidStateError(MurmurError, RuntimeError):
    """The call is not allowed in this state (a finished task spawning, a closed emitter)."""


class UnknownNodeError(MurmurError, KeyError):
    """An ``AgentGroup`` has no node of that name."""


class NoTaskContextError(MurmurError, LookupError):
    """``current_context()`` was called where no Murmur task is running."""


class MissingDependencyError(MurmurError, ModuleNotFoundError):
    """An optional package is not installed; the message names the extra to install."""


class NotAvailableError(MurmurError, NotImplementedError):
    """A feature this version does not have yet."""


class BrokerUnavailableError(MurmurError, ConnectionError):
    """The broker cannot be reached (or a publish to it failed); the URL shown has no password."""


class RuntimeClosedError(InvalidStateError):
    """The runtime was used after ``aclose()``."""


class TopologyError(InvalidValueError):
    """An ``AgentGroup`` topology is invalid; the message names the offending nodes."""


def _summarise(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:3]:
        loc = ".".join(str(p) for p in error.get("loc", ())) or "<input>"
        parts.append(f"{loc}: {error.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more
