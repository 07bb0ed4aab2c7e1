"""RuntimeOptions: the knobs of a runtime, validated once at construction."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DEFAULT_MAX_CONCURRENCY", "RuntimeOptions"]

DEFAULT_MAX_CONCURRENCY = 100


class RuntimeOptions(BaseModel):
    """Policies every call of a runtime follows.

    Args:
        max_concurrency: Default cap on in-flight tasks of one ``gather`` (>= 1).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_concurrency: int = Field(default=DEFAULT_MAX_CONCURRENCY, ge=1)
