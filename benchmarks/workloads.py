"""Workloads (the agents under test) and implementations (the ways to run a batch of them).

Every implementation runs one batch in the event loop it is given, times only the batch
itself (see ``harness.timed``), then checks every output outside the clock: a benchmark
that silently measured failures would be worse than none.

Implementations:

* ``murmur`` — ``AgentRuntime().gather(agent, specs, max_concurrency=cap)``, the
  ``TaskSpec`` list built before the clock starts;
* ``murmur+spec`` — the same, building ``[TaskSpec(input=x) for x in inputs]`` inside the
  timed region;
* raw baselines, which call the agent directly (a plain coroutine function, or
  ``pydantic_ai.Agent.run``): ``asyncio.gather`` + ``asyncio.Semaphore``,
  ``asyncio.TaskGroup`` + ``asyncio.Semaphore``, an AnyIO task group +
  ``anyio.CapacityLimiter`` and a Trio nursery + ``trio.CapacityLimiter``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import sniffio
from pydantic import BaseModel
from pydantic_ai import Agent as PydanticAIAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from murmur import AgentResult, AgentRuntime, TaskSpec, from_pydantic_ai

from .harness import Contender, Timing, run_on, timed

__all__ = [
    "ASYNCIO_ONLY_IMPLS",
    "BASELINE_FOR",
    "IMPLS",
    "IMPL_ANYIO",
    "IMPL_ASYNCIO_GATHER",
    "IMPL_MURMUR",
    "IMPL_MURMUR_SPEC",
    "IMPL_TASKGROUP",
    "IMPL_TRIO",
    "IO_SLEEP_S",
    "InFlight",
    "Workload",
    "compatible",
    "contender",
    "get_workload",
    "make_inputs",
    "make_runtime",
    "make_specs",
]

IMPL_MURMUR = "murmur"
IMPL_MURMUR_SPEC = "murmur+spec"
IMPL_ASYNCIO_GATHER = "asyncio.gather+Semaphore"
IMPL_TASKGROUP = "asyncio.TaskGroup+Semaphore"
IMPL_ANYIO = "anyio TaskGroup+CapacityLimiter"
IMPL_TRIO = "trio nursery+CapacityLimiter"

IMPLS: tuple[str, ...] = (
    IMPL_MURMUR,
    IMPL_MURMUR_SPEC,
    IMPL_ASYNCIO_GATHER,
    IMPL_TASKGROUP,
    IMPL_ANYIO,
    IMPL_TRIO,
)
#: Implementations that need an asyncio loop (asyncio or uvloop).
ASYNCIO_ONLY_IMPLS = frozenset({IMPL_ASYNCIO_GATHER, IMPL_TASKGROUP})
#: The natural raw baseline on each backend.
BASELINE_FOR: dict[str, str] = {
    "asyncio": IMPL_ASYNCIO_GATHER,
    "uvloop": IMPL_ASYNCIO_GATHER,
    "trio": IMPL_TRIO,
}

#: How long each I/O-bound task "waits on the network".
IO_SLEEP_S = 0.01


@dataclass
class InFlight:
    """Counts tasks inside the agent right now, and the most ever seen at once."""

    current: int = 0
    peak: int = 0

    def reset(self) -> None:
        self.current = 0
        self.peak = 0

    def enter(self) -> None:
        self.current += 1
        if self.current > self.peak:
            self.peak = self.current

    def exit(self) -> None:
        self.current -= 1


class Answer(BaseModel):
    """The structured output of the ``fm-structured`` workload."""

    text: str


@dataclass(frozen=True)
class Workload:
    """An agent under test, in the two forms the implementations need."""

    name: str
    description: str
    #: What ``AgentRuntime.gather`` is given.
    agent: Any
    #: The same agent as a plain ``await call(input)``, for the raw baselines.
    call: Callable[[str], Awaitable[Any]]
    #: The expected output for an input.
    expect: Callable[[str], Any]
    #: True when the agent needs an asyncio loop (pydantic-ai): raw baselines then can't
    #: run under Trio, and Murmur under Trio goes through its asyncio bridge.
    asyncio_only: bool = False
    tracker: InFlight = field(default_factory=InFlight)


def make_runtime() -> AgentRuntime:
    """The runtime every scenario measures: all defaults."""
    return AgentRuntime()


def make_inputs(n: int) -> list[str]:
    return [f"task {i}" for i in range(n)]


def make_specs(inputs: Sequence[str]) -> list[TaskSpec]:
    return [TaskSpec(input=x) for x in inputs]


# -- the agents -------------------------------------------------------------------------


async def noop_agent(value: str) -> str:
    """A function agent that does nothing: what is left is the runtime's own cost."""
    return value


def _fm_text(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("ok")])


def _fm_structured(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"text": "ok"})])


def _identity(value: str) -> str:
    return value


def _ok(value: str) -> str:
    return "ok"


def _ok_answer(value: str) -> Answer:
    return Answer(text="ok")


def _pydantic_ai_call(agent: PydanticAIAgent[Any, Any]) -> Callable[[str], Awaitable[Any]]:
    async def call(prompt: str) -> Any:
        return (await agent.run(prompt)).output

    return call


def _build_noop() -> Workload:
    return Workload(
        name="noop",
        description="function agent `async def f(x): return x`",
        agent=noop_agent,
        call=noop_agent,
        expect=_identity,
    )


async def yielding_agent(value: str) -> str:
    """A function agent that yields to the event loop once: it can suspend, so it runs
    inside every scope a policy opens (the no-op agent provably cannot, and skips the
    timeout's)."""
    await anyio.lowlevel.checkpoint()
    return value


def _build_yield() -> Workload:
    return Workload(
        name="yield",
        description="function agent `async def f(x): await checkpoint(); return x`",
        agent=yielding_agent,
        call=yielding_agent,
        expect=_identity,
    )


def _build_fm() -> Workload:
    agent: PydanticAIAgent[None, str] = PydanticAIAgent(FunctionModel(_fm_text), name="fm")
    return Workload(
        name="fm",
        description="pydantic-ai Agent(FunctionModel) returning the text 'ok'",
        agent=from_pydantic_ai(agent, name="fm"),
        call=_pydantic_ai_call(agent),
        expect=_ok,
        asyncio_only=True,
    )


def _build_fm_structured() -> Workload:
    agent: PydanticAIAgent[None, Answer] = PydanticAIAgent(
        FunctionModel(_fm_structured),
        name="fm-structured",
        output_type=Answer,
        instructions="Answer.",
    )
    return Workload(
        name="fm-structured",
        description="pydantic-ai Agent(FunctionModel, output_type=Answer) via its output tool",
        agent=from_pydantic_ai(agent, name="fm-structured"),
        call=_pydantic_ai_call(agent),
        expect=_ok_answer,
        asyncio_only=True,
    )


def _build_io() -> Workload:
    tracker = InFlight()

    async def io_agent(value: str) -> str:
        tracker.enter()
        try:
            await anyio.sleep(IO_SLEEP_S)
        finally:
            tracker.exit()
        return value

    return Workload(
        name="io-sleep",
        description=f"function agent awaiting anyio.sleep({IO_SLEEP_S})",
        agent=io_agent,
        call=io_agent,
        expect=_identity,
        tracker=tracker,
    )


def _build_fm_sleep() -> Workload:
    tracker = InFlight()

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        tracker.enter()
        try:
            await asyncio.sleep(IO_SLEEP_S)
        finally:
            tracker.exit()
        return ModelResponse(parts=[TextPart("ok")])

    agent: PydanticAIAgent[None, str] = PydanticAIAgent(FunctionModel(model), name="fm-sleep")
    return Workload(
        name="fm-sleep",
        description=f"pydantic-ai Agent(FunctionModel) whose async model sleeps {IO_SLEEP_S}s",
        agent=from_pydantic_ai(agent, name="fm-sleep"),
        call=_pydantic_ai_call(agent),
        expect=_ok,
        asyncio_only=True,
        tracker=tracker,
    )


def _build_fm_structured_sleep() -> Workload:
    tracker = InFlight()

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        tracker.enter()
        try:
            await asyncio.sleep(IO_SLEEP_S)
        finally:
            tracker.exit()
        return _fm_structured(messages, info)

    agent: PydanticAIAgent[None, Answer] = PydanticAIAgent(
        FunctionModel(model),
        name="fm-structured-sleep",
        output_type=Answer,
        instructions="Answer.",
    )
    return Workload(
        name="fm-structured-sleep",
        description=f"fm-structured whose async model sleeps {IO_SLEEP_S}s",
        agent=from_pydantic_ai(agent, name="fm-structured-sleep"),
        call=_pydantic_ai_call(agent),
        expect=_ok_answer,
        asyncio_only=True,
        tracker=tracker,
    )


_BUILDERS: dict[str, Callable[[], Workload]] = {
    "noop": _build_noop,
    "yield": _build_yield,
    "fm": _build_fm,
    "fm-structured": _build_fm_structured,
    "io-sleep": _build_io,
    "fm-sleep": _build_fm_sleep,
    "fm-structured-sleep": _build_fm_structured_sleep,
}


@functools.cache
def get_workload(name: str) -> Workload:
    """The workload called ``name`` (built once per process)."""
    return _BUILDERS[name]()


# -- the implementations ---------------------------------------------------------------


def _check(workload: Workload, inputs: Sequence[str], outputs: Sequence[Any]) -> None:
    if len(outputs) != len(inputs):
        raise AssertionError(f"{workload.name}: {len(outputs)} outputs for {len(inputs)} inputs")
    for index in {0, len(inputs) // 2, len(inputs) - 1}:
        if outputs[index] != workload.expect(inputs[index]):
            raise AssertionError(
                f"{workload.name}: output {index} is {outputs[index]!r}, "
                f"expected {workload.expect(inputs[index])!r}"
            )


def _murmur_outputs(results: Sequence[AgentResult[Any]]) -> list[Any]:
    for result in results:
        if result.error is not None:
            raise AssertionError(f"a Murmur task failed: {result.error!r}") from result.error
    return [result.output for result in results]


async def _measure(
    workload: Workload, inputs: Sequence[str], batch: Callable[[], Awaitable[list[Any]]]
) -> Timing:
    """Time one baseline batch, then check its outputs (outside the clock)."""
    workload.tracker.reset()
    timing, outputs = await timed(batch)
    _check(workload, inputs, outputs)
    return timing


async def _run_murmur(
    workload: Workload,
    inputs: Sequence[str],
    cap: int,
    specs: Sequence[TaskSpec] | None,
) -> Timing:
    agent = workload.agent
    async with make_runtime() as runtime:
        if workload.asyncio_only and sniffio.current_async_library() != "asyncio":
            # Start the runtime's asyncio bridge thread before the clock: a long-lived
            # runtime pays that once, not per batch.
            await runtime.run(agent, TaskSpec(input="warm-up"))
        workload.tracker.reset()
        if specs is None:
            timing, results = await timed(
                lambda: runtime.gather(
                    agent, [TaskSpec(input=x) for x in inputs], max_concurrency=cap
                )
            )
        else:
            given = specs
            timing, results = await timed(lambda: runtime.gather(agent, given, max_concurrency=cap))
    _check(workload, inputs, _murmur_outputs(results))
    return timing


async def _run_asyncio_gather(workload: Workload, inputs: Sequence[str], cap: int) -> Timing:
    call = workload.call

    async def batch() -> list[Any]:
        semaphore = asyncio.Semaphore(cap)

        async def one(value: str) -> Any:
            async with semaphore:
                return await call(value)

        return await asyncio.gather(*[one(x) for x in inputs])

    return await _measure(workload, inputs, batch)


async def _run_taskgroup(workload: Workload, inputs: Sequence[str], cap: int) -> Timing:
    call = workload.call

    async def batch() -> list[Any]:
        semaphore = asyncio.Semaphore(cap)

        async def one(value: str) -> Any:
            async with semaphore:
                return await call(value)

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(x)) for x in inputs]
        return [task.result() for task in tasks]

    return await _measure(workload, inputs, batch)


async def _run_anyio(workload: Workload, inputs: Sequence[str], cap: int) -> Timing:
    call = workload.call

    async def batch() -> list[Any]:
        limiter = anyio.CapacityLimiter(cap)
        outputs: list[Any] = [None] * len(inputs)

        async def one(index: int, value: str) -> None:
            async with limiter:
                outputs[index] = await call(value)

        async with anyio.create_task_group() as tg:
            for index, value in enumerate(inputs):
                tg.start_soon(one, index, value)
        return outputs

    return await _measure(workload, inputs, batch)


async def _run_trio(workload: Workload, inputs: Sequence[str], cap: int) -> Timing:
    import trio

    call = workload.call

    async def batch() -> list[Any]:
        limiter = trio.CapacityLimiter(cap)
        outputs: list[Any] = [None] * len(inputs)

        async def one(index: int, value: str) -> None:
            async with limiter:
                outputs[index] = await call(value)

        async with trio.open_nursery() as nursery:
            for index, value in enumerate(inputs):
                nursery.start_soon(one, index, value)
        return outputs

    return await _measure(workload, inputs, batch)


def compatible(impl: str, backend: str, workload: Workload) -> bool:
    """Can ``impl`` run ``workload`` on ``backend``?"""
    if impl in (IMPL_MURMUR, IMPL_MURMUR_SPEC):
        return True
    if workload.asyncio_only and backend == "trio":
        return False  # pydantic-ai needs an asyncio loop; only Murmur bridges it
    if impl in ASYNCIO_ONLY_IMPLS:
        return backend in ("asyncio", "uvloop")
    if impl == IMPL_TRIO:
        return backend == "trio"
    return impl == IMPL_ANYIO


def contender(
    impl: str,
    backend: str,
    workload: Workload,
    inputs: Sequence[str],
    cap: int,
    specs: Sequence[TaskSpec] | None = None,
) -> Contender:
    """One repetition of ``impl`` on ``backend``, ready for ``harness.interleave``."""
    if not compatible(impl, backend, workload):
        raise ValueError(f"{impl} cannot run {workload.name} on {backend}")
    main: Callable[[], Awaitable[Timing]]
    if impl == IMPL_MURMUR:
        prepared = specs if specs is not None else make_specs(inputs)
        main = functools.partial(_run_murmur, workload, inputs, cap, prepared)
    elif impl == IMPL_MURMUR_SPEC:
        main = functools.partial(_run_murmur, workload, inputs, cap, None)
    elif impl == IMPL_ASYNCIO_GATHER:
        main = functools.partial(_run_asyncio_gather, workload, inputs, cap)
    elif impl == IMPL_TASKGROUP:
        main = functools.partial(_run_taskgroup, workload, inputs, cap)
    elif impl == IMPL_ANYIO:
        main = functools.partial(_run_anyio, workload, inputs, cap)
    elif impl == IMPL_TRIO:
        main = functools.partial(_run_trio, workload, inputs, cap)
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    return Contender(impl, backend, functools.partial(run_on, backend, main))
