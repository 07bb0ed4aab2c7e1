"""A stray cancellation in an executor-side stage is a failure retry can judge.

The reshape converts a stray ``CancelledError`` into ``StrayCancellationError`` "at
dispatch, so retry can see it", and lets users opt in with
``retry_on=(StrayCancellationError,)``. Executor-side stages (the default side of user
stages) run per attempt, inside retry: a stray one raised there is the same failure.
"""

from __future__ import annotations

from typing import Any

import pytest

from murmur import (
    AgentContext,
    AgentRuntime,
    CallNext,
    RuntimeOptions,
    StrayCancellationError,
    TaskSpec,
)
from support import stray_cancellation

pytestmark = pytest.mark.anyio


async def test_a_stray_cancellation_in_an_executor_stage_is_retried_when_asked() -> None:
    calls = 0

    class SharedCache:
        """Per attempt: awaits a shared lookup, which someone else cancelled the first time."""

        async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                await stray_cancellation()
            return await call_next(ctx)

    async def agent(value: str) -> str:
        return value

    options = RuntimeOptions(
        retry_max_attempts=2, retry_backoff_factor=0, retry_on=(StrayCancellationError,)
    )
    async with AgentRuntime(options=options, middleware=[SharedCache()]) as runtime:
        result = await runtime.run(agent, TaskSpec(input="x"))
    # Today: StrayCancellationError after one try; retry saw a BaseException, not a failure.
    assert (result.output, calls) == ("x", 2), result.error
