"""RetryMiddleware: retries retryable failures with capped exponential backoff."""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeGuard

import anyio

from .._cancellation import stray_cancellation
from .._http import retry_after
from .._lazy import loaded_class
from ..errors import (
    BudgetExceededError,
    InputValidationError,
    InvalidValueError,
    RateLimitError,
    RemoteAgentError,
    SpawnDepthExceededError,
)
from ..events.types import EventType

if TYPE_CHECKING:
    from pydantic_ai.exceptions import ModelHTTPError

    from .._context import AgentContext
    from .._pipeline import CallNext

__all__ = ["RetryMiddleware", "RetryOn", "is_retryable"]

#: Which failures to retry: exception types, or a predicate on the exception.
RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool]

_RETRYABLE_STATUS = frozenset({408, 429})


def is_retryable(error: BaseException) -> bool:
    """The default ``retry_on``: transient failures only.

    Retried: timeouts (Murmur's ``AgentTimeoutError`` included), ``ConnectionError`` and
    other ``OSError`` (a rate limit's ``RateLimitStoreError`` too), pydantic-ai
    ``ModelHTTPError`` with status 408, 429 or 5xx, and pydantic-ai ``ModelAPIError``
    without a status (transport failures). Not retried: budget, depth and rate-limit
    refusals (``RateLimitError``), input validation errors, anything else (bugs in user
    code, output validation failures, 4xx responses). A failure from a worker
    (``RemoteAgentError``) is judged by its original classes and status code, the same way.
    """
    if isinstance(error, _NEVER_RETRIED):
        return False
    if isinstance(error, RemoteAgentError):
        return _remote_is_retryable(error)
    if _is_model_http_error(error):
        return error.status_code in _RETRYABLE_STATUS or 500 <= error.status_code <= 599
    if isinstance(error, OSError):
        return True
    api_error = loaded_class("pydantic_ai.exceptions", "ModelAPIError")
    return api_error is not None and isinstance(error, api_error)


def _remote_is_retryable(error: RemoteAgentError) -> bool:
    """``is_retryable`` for a failure from another process, judged by its original classes
    (and status code): a worker's ``ConnectionError`` is retried as it is in-process."""
    kinds = error.kinds
    if any(error.is_a(kind) for kind in _NEVER_RETRIED):
        return False
    if "pydantic_ai.exceptions.ModelHTTPError" in kinds and error.status_code is not None:
        status = error.status_code
        return status in _RETRYABLE_STATUS or 500 <= status <= 599
    return "builtins.OSError" in kinds or "pydantic_ai.exceptions.ModelAPIError" in kinds


_NEVER_RETRIED = (
    BudgetExceededError,
    SpawnDepthExceededError,
    InputValidationError,
    RateLimitError,
)


def _is_model_http_error(error: BaseException) -> TypeGuard[ModelHTTPError]:
    http_error = loaded_class("pydantic_ai.exceptions", "ModelHTTPError")
    return http_error is not None and isinstance(error, http_error)


def retry_after_seconds(error: BaseException) -> float | None:
    """The seconds a failed call's response asked to wait before trying again, if it said:
    a pydantic-ai ``ModelHTTPError``'s ``Retry-After`` (``murmur._http.retry_after``), or
    the reading a worker made where the failure happened and sent back with it
    (``RemoteAgentError.retry_after``: ``Retry-After``, else the provider's reset headers).
    """
    if isinstance(error, RemoteAgentError):
        hinted = error.retry_after
        return None if hinted is None or not math.isfinite(hinted) else max(0.0, hinted)
    return retry_after(error)


class RetryMiddleware:
    """Runs the rest of the pipeline up to ``max_attempts`` times.

    The wait after failed attempt k (1-based) is ``initial_delay * backoff_factor ** (k - 1)``
    seconds (no wait when either is 0), capped at ``max_delay``, then spread by ``jitter``
    (a fraction: the wait is multiplied by a uniform factor in [1 - jitter, 1 + jitter]).
    A ``Retry-After`` header on the failure is honoured: the wait is at least that long.
    One longer than ``max_delay`` is not waited for: the failure is then not retried. A
    failure from a worker (``RemoteAgentError``) is judged by the wait its response asked
    for where it happened (``RemoteAgentError.retry_after``), the same way.
    Waits are cancellable and happen inside the task, so they never outlive it.

    When every attempt fails, the last error is raised; the earlier ones are reachable
    through its ``__context__`` chain and listed in its notes.
    """

    #: Runs where the call was made (see ``murmur.Stage``).
    side = "caller"

    def __init__(
        self,
        max_attempts: int,
        *,
        initial_delay: float = 1.0,
        backoff_factor: float = 2.0,
        max_delay: float | None = 60.0,
        jitter: float = 0.0,
        retry_on: RetryOn | None = None,
        sleep: Callable[[float], Awaitable[Any]] = anyio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise InvalidValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        if not initial_delay >= 0:  # NaN too
            raise InvalidValueError(f"initial_delay must be >= 0, got {initial_delay!r}")
        if backoff_factor < 0:
            raise InvalidValueError(f"backoff_factor must be >= 0, got {backoff_factor!r}")
        if max_delay is not None and max_delay < 0:
            raise InvalidValueError(f"max_delay must be >= 0 or None, got {max_delay!r}")
        if not 0 <= jitter <= 1:
            raise InvalidValueError(f"jitter must be between 0 and 1, got {jitter!r}")
        self.max_attempts = max_attempts
        self.initial_delay = initial_delay
        self.backoff_factor = backoff_factor
        self.max_delay = max_delay
        self.jitter = jitter
        self._retryable = _as_predicate(retry_on)
        self._sleep = sleep
        self._rand = rand

    def delay_after(self, attempt: int, error: BaseException | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        if self.initial_delay == 0 or self.backoff_factor == 0:
            delay = 0.0
        else:
            try:
                delay = self.initial_delay * self.backoff_factor ** (attempt - 1)
            except OverflowError:  # a huge attempt count: the cap (if any) decides
                delay = math.inf
        if self.max_delay is not None:
            delay = min(delay, self.max_delay)
        if self.jitter and delay:
            delay *= 1 - self.jitter + 2 * self.jitter * self._rand()
            if self.max_delay is not None:
                delay = min(delay, self.max_delay)  # jitter never takes a wait past the cap
        hinted = retry_after_seconds(error) if error is not None else None
        if hinted is not None:
            delay = max(delay, hinted)
        return delay

    async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
        failures: list[Exception] = []
        while True:
            try:
                return await call_next(ctx)
            except Exception as exc:
                error = exc
            except BaseException as exc:
                # A cancellation this task was not sent (a stage or a transport awaited
                # something someone else cancelled) is this attempt's failure, judged here.
                stray = stray_cancellation(exc, ctx.agent, ctx.origin.cancels)
                if stray is None:
                    raise
                error = stray
            if failures and failures[-1] is not error and error.__context__ is None:
                error.__context__ = failures[-1]
            failures.append(error)
            attempt = len(failures)
            if attempt >= self.max_attempts or not self._retryable(error):
                if attempt > 1:
                    error.add_note(
                        f"murmur: attempt {attempt} of {self.max_attempts} failed; earlier: "
                        + "; ".join(f"{type(e).__name__}: {e}" for e in failures[:-1])
                    )
                raise error
            hinted = retry_after_seconds(error)
            if hinted is not None and self.max_delay is not None and hinted > self.max_delay:
                # Waiting less than the server asked is futile, waiting more than the
                # cap is not allowed: it fails now (a day's Retry-After must not park
                # the task, its concurrency slot and its token reservation for a day).
                error.add_note(
                    f"murmur: not retried: the server asked to wait {hinted:g} s "
                    f"(Retry-After), more than retry_max_delay={self.max_delay:g} s"
                )
                raise error
            delay = self.delay_after(attempt, error)
            await ctx.emit(
                EventType.RETRY_SCHEDULED,
                error=failures[-1],
                data={"delay": delay, "next_attempt": attempt + 1},
            )
            await self._sleep(delay)


def _as_predicate(retry_on: RetryOn | None) -> Callable[[BaseException], bool]:
    if retry_on is None:
        return is_retryable
    if isinstance(retry_on, tuple):
        types = retry_on

        def matches(error: BaseException) -> bool:
            if isinstance(error, types):
                return True
            # A failure from another process matches by its original classes' names.
            return isinstance(error, RemoteAgentError) and any(map(error.is_a, types))

        return matches
    return retry_on
