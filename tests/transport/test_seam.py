"""The transport seam: plain-data envelopes out, results in, agents found by name.

Every test here goes through ``LoopbackTransport``: each attempt becomes a ``TaskEnvelope``
serialised to JSON and run by an ``Executor`` that knows its agents only by name, as a
remote worker would. What a user sees must be what the in-process runtime gives.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.models.test import TestModel

from murmur import (
    AgentContext,
    AgentRuntime,
    AgentTimeoutError,
    BudgetExceededError,
    CallNext,
    EventType,
    FunctionAgent,
    RemoteAgentError,
    RuntimeOptions,
    TaskSpec,
    TokenBudget,
    UnknownAgentError,
    from_pydantic_ai,
)
from murmur.transport import Executor, LoopbackTransport, TaskEnvelope
from murmur.transport.base import Transport
from support import Recorder, cancel_when_ready

pytestmark = pytest.mark.anyio


async def shout(text: str) -> str:
    return text.upper()


class Sink:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def emit(self, event: Any) -> None:
        self.events.append(event)


def envelope(agent: str, value: Any, **fields: Any) -> TaskEnvelope:
    return TaskEnvelope(agent=agent, task=TaskSpec(input=value), trace_id="t", **fields)


async def test_an_executor_runs_an_envelope_given_only_a_registry() -> None:
    executor = Executor(agents={"shout": FunctionAgent(shout)})
    result = await executor.execute(envelope("shout", "hi", attempt=2), Sink())
    assert (result.output, result.error, result.attempts, result.agent) == ("HI", None, 2, "shout")


async def test_an_unknown_agent_comes_back_as_an_error_result_naming_it() -> None:
    executor = Executor(agents={"shout": FunctionAgent(shout)})
    result = await executor.execute(envelope("whisper", "hi"), Sink())
    assert isinstance(result.error, UnknownAgentError)
    assert "'whisper'" in str(result.error)
    assert "'shout'" in str(result.error)


def test_an_envelope_is_plain_json() -> None:
    sent = envelope(
        "shout",
        {"q": [1, 2]},
        deadline=123.5,
        token_cap=400,
        wants=frozenset({"task.failed"}),
        depth=2,
    )
    received = TaskEnvelope.model_validate_json(sent.model_dump_json())
    assert received == sent
    assert received.version == 1


def loopback(*agents: Any, **options: Any) -> tuple[AgentRuntime, LoopbackTransport, Recorder]:
    executor = Executor(agents={FunctionAgent(a).name: FunctionAgent(a) for a in agents})
    transport = LoopbackTransport(executor)
    events = Recorder()
    runtime = AgentRuntime(
        options=RuntimeOptions(**options), transport=transport, event_emitter=events
    )
    return runtime, transport, events


async def test_run_and_gather_through_the_seam_match_in_process() -> None:
    runtime, transport, events = loopback(shout)
    async with runtime:
        one = await runtime.run(shout, TaskSpec(input="a"))
        many = await runtime.gather(shout, [TaskSpec(input=c) for c in "bcd"], max_concurrency=2)
    assert one.output == "A"
    assert [r.output for r in many] == ["B", "C", "D"]
    assert transport.submitted == 4
    assert events.types().count(EventType.TASK_SUCCEEDED) == 4


async def test_a_failure_crosses_as_a_remote_error_with_its_type_and_message() -> None:
    async def broken(text: str) -> str:
        raise KeyError(text)

    runtime, _, _ = loopback(broken)
    async with runtime:
        result = await runtime.run(broken, TaskSpec(input="k"))
    assert isinstance(result.error, RemoteAgentError)
    assert result.error.type_name == "KeyError"
    assert "k" in result.error.message


async def test_retry_runs_on_the_caller_side_each_attempt_a_new_envelope() -> None:
    calls = 0

    async def flaky(text: str) -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("reset")
        return text

    runtime, transport, events = loopback(
        flaky, retry_max_attempts=3, retry_backoff_factor=0, retry_on=(RemoteAgentError,)
    )
    async with runtime:
        result = await runtime.run(flaky, TaskSpec(input="x"))
    assert (result.output, result.attempts) == ("x", 3)
    assert transport.submitted == 3
    assert len(events.of(EventType.RETRY_SCHEDULED)) == 2


async def test_the_attempt_deadline_travels_in_the_envelope() -> None:
    async def hangs(text: str) -> str:
        await anyio.sleep_forever()
        return text

    runtime, _, events = loopback(hangs, timeout_seconds=0.01)
    async with runtime:
        with anyio.fail_after(30):
            result = await runtime.run(hangs, TaskSpec(input="x"))
    # Murmur's own task errors come back as themselves (so retry judges them as usual).
    assert isinstance(result.error, AgentTimeoutError)
    # The executor's event reaches the caller's emitter.
    assert len(events.of(EventType.ATTEMPT_TIMED_OUT)) == 1


async def test_the_budget_is_decided_on_the_caller_side_and_capped_remotely() -> None:
    model = TestModel()
    agent = from_pydantic_ai(PydanticAgent(model), name="model")
    executor = Executor(agents={"model": agent})
    budget = TokenBudget(limit=5, reserve_per_task=5)
    runtime = AgentRuntime(
        options=RuntimeOptions(token_budget=budget),
        transport=LoopbackTransport(executor),
        event_emitter=Recorder(),
    )
    async with runtime:
        result = await runtime.run(agent, TaskSpec(input="a long enough prompt to pass five"))
    # The granted cap travelled in the envelope and capped the pydantic-ai run there.
    assert isinstance(result.error, BudgetExceededError)
    assert budget.used >= 5  # the spend came back with the result and was settled
    assert budget.reserved == 0


async def test_an_executor_side_stage_is_refused_when_attempts_run_elsewhere() -> None:
    async def stage(ctx: AgentContext, call_next: CallNext) -> Any:
        return await call_next(ctx)

    transport = LoopbackTransport(Executor())
    with pytest.raises(ValueError, match=r"middleware\[0\] runs on the executor side"):
        AgentRuntime(transport=transport, middleware=[stage])


async def test_cancelling_the_caller_cancels_the_attempt() -> None:
    started = anyio.Event()
    stopped: list[bool] = []

    async def waits(text: str) -> str:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            stopped.append(True)
        return text

    runtime, _, _ = loopback(waits)
    async with runtime:
        outcome = await cancel_when_ready(
            lambda: runtime.run(waits, TaskSpec(input="x")), started.wait
        )
    assert outcome.cancelled_caught
    assert outcome.returned == []
    assert stopped == [True]


def test_transport_is_the_abstract_seam() -> None:
    assert issubclass(LoopbackTransport, Transport)
    with pytest.raises(TypeError):
        Transport()  # type: ignore[abstract]
