"""A batch whose attempts run elsewhere is revoked as a whole when it is cancelled as one.

Every attempt of a remote ``gather`` carries the batch's id; cancelled as a whole (its
caller's scope, ``fail_fast``), the batch calls ``Transport.revoke_batch`` once, before any
of its attempts sees the cancellation. A cancellation from inside one task (a caller-side
stage's own scope) stops that attempt only, and the batch goes on.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from murmur import AgentContext, AgentRuntime, CallNext, RuntimeOptions, TaskSpec
from murmur._types import AgentResult
from murmur.errors import TaskCancelledError
from murmur.transport import TaskEnvelope
from murmur.transport.base import Transport
from support import cancel_when_ready

pytestmark = pytest.mark.anyio


async def hold(text: str) -> str:
    return text


class Holding(Transport):
    """Answers ``"fail"`` with a failure and ``"ok..."`` at once; holds the others until
    cancelled, noting when each saw its cancellation."""

    def __init__(self) -> None:
        self.envelopes: list[TaskEnvelope] = []
        self.waiting = 0
        self.cancelled = 0
        #: (batch id, attempts that had seen their cancellation then), per call.
        self.revoked: list[tuple[str, int]] = []
        self.all_waiting = anyio.Event()
        self.expect = 0

    async def submit(self, envelope: TaskEnvelope, events: Any) -> AgentResult[Any]:
        self.envelopes.append(envelope)
        text = envelope.task.input
        if text == "fail" or text.startswith("ok"):
            await anyio.lowlevel.checkpoint()
            error = ValueError("fails first") if text == "fail" else None
            output = None if error else text
            return AgentResult._build(
                output, error, None, envelope.attempt, 0.0, envelope.task.task_id, envelope.agent
            )
        self.waiting += 1
        if self.waiting == self.expect:
            self.all_waiting.set()
        try:
            await anyio.sleep_forever()
        finally:
            self.cancelled += 1
        raise AssertionError("unreachable")

    async def revoke_batch(self, batch_id: str) -> None:
        self.revoked.append((batch_id, self.cancelled))


async def test_a_cancelled_gather_is_revoked_once_by_its_batch_id_before_its_attempts() -> None:
    transport = Holding()
    transport.expect = 5
    async with AgentRuntime(transport=transport) as runtime:
        tasks = [TaskSpec(input=f"held {i}") for i in range(5)]
        outcome = await cancel_when_ready(
            lambda: runtime.gather(hold, tasks), transport.all_waiting.wait
        )
    assert outcome.propagated
    assert not outcome.returned
    (batch_id,) = {envelope.batch_id for envelope in transport.envelopes}
    assert batch_id is not None
    # Once, before any attempt saw the cancellation; then every attempt saw it.
    assert transport.revoked == [(batch_id, 0)]
    assert transport.cancelled == 5


async def test_fail_fast_revokes_the_rest_of_the_batch_by_its_id() -> None:
    transport = Holding()
    async with AgentRuntime(transport=transport) as runtime:
        tasks = [TaskSpec(input=f"held {i}") for i in range(4)] + [TaskSpec(input="fail")]
        results = await runtime.gather(hold, tasks, fail_fast=True)
    assert str(results[4].error) == "fails first"
    assert all(isinstance(r.error, TaskCancelledError) for r in results[:4])
    (batch_id,) = {envelope.batch_id for envelope in transport.envelopes}
    assert transport.revoked == [(batch_id, 0)]
    assert transport.cancelled == 4


async def test_an_attempt_cancelled_by_a_stage_leaves_its_batch_going_on() -> None:
    transport = Holding()
    transport.expect = 1

    class GivesUpOnHeld:
        """A caller-side stage with its own timeout: the held attempt is cut off (as if
        its time ran out) and its task fails; the batch goes on."""

        side = "caller"

        async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
            if not str(ctx.task.input).startswith("held"):
                return await call_next(ctx)
            async with anyio.create_task_group() as tg:

                async def cut_off_once_waiting() -> None:
                    await transport.all_waiting.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(cut_off_once_waiting)
                await call_next(ctx)
            raise TimeoutError("gave up on it")

    async with AgentRuntime(transport=transport, middleware=[GivesUpOnHeld()]) as runtime:
        tasks = [TaskSpec(input="held"), *(TaskSpec(input=f"ok {i}") for i in range(3))]
        results = await runtime.gather(hold, tasks, max_concurrency=1)
    assert [r.output for r in results[1:]] == ["ok 0", "ok 1", "ok 2"]
    assert str(results[0].error) == "gave up on it"
    assert transport.cancelled == 1
    assert transport.revoked == []  # the batch was not cancelled: nothing revoked by its id
    # Its later attempts carried the same batch id, and ran.
    assert len({envelope.batch_id for envelope in transport.envelopes}) == 1


async def test_a_finished_gather_revokes_nothing_and_a_run_carries_no_batch_id() -> None:
    transport = Holding()
    options = RuntimeOptions(max_concurrency=2)
    async with AgentRuntime(transport=transport, options=options) as runtime:
        results = await runtime.gather(hold, [TaskSpec(input=f"ok {i}") for i in range(5)])
        single = await runtime.run(hold, TaskSpec(input="ok single"))
    assert [r.output for r in results] == [f"ok {i}" for i in range(5)]
    assert single.output == "ok single"
    assert transport.revoked == []
    batch_ids = [envelope.batch_id for envelope in transport.envelopes]
    assert len(set(batch_ids[:5])) == 1
    assert batch_ids[0] is not None
    assert batch_ids[5] is None


async def test_two_gathers_carry_different_batch_ids() -> None:
    transport = Holding()
    async with AgentRuntime(transport=transport) as runtime:
        await runtime.gather(hold, [TaskSpec(input="ok a")])
        await runtime.gather(hold, [TaskSpec(input="ok b")])
    first, second = (envelope.batch_id for envelope in transport.envelopes)
    assert first != second
