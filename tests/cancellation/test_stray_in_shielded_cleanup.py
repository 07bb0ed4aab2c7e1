"""Stray cancellations inside a shielded clean-up are failures too.

A common pattern: when a caller is cancelled, it runs one last agent call (a summary, a
compensation) inside ``anyio.CancelScope(shield=True)``. The task is still "being
cancelled" by the outer scope at that point (on asyncio, ``Task.cancelling()`` is 1),
but nothing cancels the shielded call. A stray ``CancelledError`` in that call's agent is
that task's failure, exactly as it is outside the clean-up.
"""

from __future__ import annotations

import pytest

from murmur import AgentRuntime, StrayCancellationError, TaskSpec
from support import in_shielded_cleanup, stray_cancellation

pytestmark = pytest.mark.anyio


async def test_a_stray_cancellation_in_a_shielded_cleanup_run_is_a_failure_result() -> None:
    async def cleanup(text: str) -> str:
        await stray_cancellation()
        return text

    async with AgentRuntime() as runtime:
        result = await in_shielded_cleanup(lambda: runtime.run(cleanup, TaskSpec(input="bye")))
    # Nothing cancelled the shielded call: its agent's stray CancelledError is its failure.
    assert not isinstance(result, BaseException), f"run() raised {result!r}"
    assert isinstance(result.error, StrayCancellationError)  # type: ignore[attr-defined]
