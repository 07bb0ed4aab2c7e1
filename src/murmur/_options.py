"""RuntimeOptions: the knobs of a runtime, validated once at construction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import InvalidValueError
from .middleware.cost_tracking import TokenBudget
from .middleware.rate_limit import RateLimit

__all__ = ["DEFAULT_MAX_CONCURRENCY", "RuntimeOptions"]

DEFAULT_MAX_CONCURRENCY = 100


class RuntimeOptions(BaseModel):
    """Policies every call of a runtime follows; invalid values fail here, naming the field.

    Attributes:
        timeout_seconds: Deadline of each attempt (> 0); ``None``: no deadline.
        retry_max_attempts: Attempts per task (>= 1; 1 = no retry).
        retry_initial_delay: Wait after the first failed attempt, in seconds (>= 0).
        retry_backoff_factor: Wait after failed attempt k is
            ``retry_initial_delay * factor ** (k - 1)`` seconds (>= 0; 0 = no wait).
        retry_max_delay: Cap on each wait (>= 0); ``None``: uncapped.
        retry_jitter: Spread of each wait, a fraction in [0, 1].
        retry_on: Exception types to retry, or a predicate; ``None``: transient failures
            (see ``murmur.middleware.is_retryable``).
        token_budget: A ``TokenBudget`` shared by every task and spawned child.
        max_spawn_depth: Deepest spawn level allowed (>= 0); ``None``: unlimited.
        max_concurrency: Default cap on in-flight tasks of one ``gather`` (>= 1).
        rate_limits: ``RateLimit``s (requests and tokens per minute per model, provider or
            agent); every attempt waits until each limit that applies admits it.
        token_estimator: Estimates a task's input tokens for the limits with ``tpm``
            (``f(task) -> int``); default ``murmur.middleware.estimate_input_tokens``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    timeout_seconds: float | None = Field(default=None, gt=0)
    retry_max_attempts: int = Field(default=1, ge=1, strict=True)
    retry_initial_delay: float = Field(default=1.0, ge=0)
    retry_backoff_factor: float = Field(default=2.0, ge=0)
    retry_max_delay: float | None = Field(default=60.0, ge=0)
    retry_jitter: float = Field(default=0.1, ge=0, le=1)
    retry_on: tuple[type[BaseException], ...] | Callable[[BaseException], bool] | None = None
    token_budget: TokenBudget | None = None
    max_spawn_depth: int | None = Field(default=None, ge=0, strict=True)
    max_concurrency: int = Field(default=DEFAULT_MAX_CONCURRENCY, ge=1, strict=True)
    rate_limits: tuple[RateLimit, ...] = ()
    token_estimator: Callable[[Any], int] | None = None

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _check_rate_limits(cls, value: Any) -> Any:
        if isinstance(value, RateLimit):
            return (value,)
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, tuple):
            bad = [v for v in value if not isinstance(v, RateLimit)]
            if bad:
                raise InvalidValueError(f"rate_limits must hold murmur.RateLimit, got {bad!r}")
            clocks = {id(v.clock) for v in value if v.store is None}
            if len(clocks) > 1:
                raise InvalidValueError(
                    "the in-process rate_limits of a runtime must share one clock"
                )
        return value

    @field_validator("retry_on", mode="before")
    @classmethod
    def _check_retry_on(cls, value: Any) -> Any:
        if isinstance(value, type) and issubclass(value, BaseException):
            return (value,)
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, tuple):
            bad = [v for v in value if not (isinstance(v, type) and issubclass(v, BaseException))]
            if bad:
                raise InvalidValueError(f"retry_on must hold exception types, got {bad!r}")
        return value
