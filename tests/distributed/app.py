"""A small app module for workers started in tests (``--app tests.distributed.app``).

Its agents are what the tests need and nothing more: other tests add theirs here.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.lowlevel
from pydantic import BaseModel
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

import murmur
from murmur import AgentContext, AgentGroup, AgentTimeoutError, Edge, EventType


async def shout(text: str) -> str:
    """``text`` in upper case."""
    return text.upper()


async def explode(text: str) -> str:
    """Always fails (a task error, sent back to the caller as its result)."""
    raise ValueError(f"explode refused {text!r}")


async def hold(path: str) -> str:
    """Runs until the file ``path`` exists (the test creates it), then returns its text.

    A task that stays in flight for as long as a test wants, across processes.
    """
    flag = Path(path)
    while not flag.exists():
        await anyio.sleep(0.01)
    return flag.read_text()


async def fussy(text: str) -> str:
    """Upper-cases its input, but fails as ``explode`` does on an empty one."""
    if not text:
        return await explode(text)
    return await shout(text)


async def forever(text: str) -> str:
    """Never finishes: only a deadline ends it."""
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


# -- concurrency, observed where the tasks run ---------------------------------------------


class Probe(BaseModel):
    """One task of a batch whose overlap ``overlap`` measures."""

    batch: str
    #: Tasks of the batch the caller may have out at once.
    limit: int
    #: Tasks in the batch.
    size: int


@dataclass
class _Batch:
    arrived: int = 0
    running: int = 0
    peak: int = 0
    #: Tasks waiting for the batch's arrivals to reach a count, with their wake-up events.
    waiting: list[tuple[int, anyio.Event]] = field(default_factory=list)


_batches: defaultdict[str, _Batch] = defaultdict(_Batch)
#: Checkpoints a released ``overlap`` task passes before it ends.
_LINGER = 20


async def overlap(probe: Probe) -> int:
    """The most tasks of ``probe.batch`` seen running at once in this worker so far.

    The batch's k-th task to arrive finishes only once ``k + limit`` tasks have arrived
    (or all have), and lingers a few checkpoints more: a caller keeping ``limit`` tasks
    out keeps exactly ``limit`` running, and a task sent beyond them is seen running
    beside ``limit`` others.
    """
    batch = _batches[probe.batch]
    index = batch.arrived
    batch.arrived += 1
    batch.running += 1
    batch.peak = max(batch.peak, batch.running)
    for waiter in [w for w in batch.waiting if w[0] <= batch.arrived]:
        batch.waiting.remove(waiter)
        waiter[1].set()
    try:
        enough = min(index + probe.limit, probe.size)
        if batch.arrived < enough:
            released = anyio.Event()
            batch.waiting.append((enough, released))
            await released.wait()
        for _ in range(_LINGER):
            await anyio.lowlevel.checkpoint()  # time for tasks sent beyond the limit to show
    finally:
        batch.running -= 1
    return batch.peak


# -- structured output ---------------------------------------------------------------------


class Verdict(BaseModel):
    """A pydantic-ai agent's structured output."""

    label: str
    score: int


judge = PydanticAgent(
    TestModel(custom_output_args={"label": "fine", "score": 7}),
    output_type=Verdict,
    name="judge",
)


def _summarise(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    prompt = next(
        str(part.content)
        for message in messages
        for part in message.parts
        if part.part_kind == "user-prompt"
    )
    return ModelResponse(parts=[TextPart(f"summary of {prompt}")])


summariser = murmur.Agent(name="summariser", model=FunctionModel(_summarise))


# -- a group of three: words -> count -> report --------------------------------------------


async def words(text: str) -> list[str]:
    """The words of a text."""
    return text.split()


async def count(items: list[str]) -> int:
    """How many items."""
    return len(items)


async def report(n: int) -> str:
    """A sentence about a count."""
    return f"{n} words"


counting = AgentGroup(
    "counting",
    {words: Edge(to=(count,)), count: Edge(to=(report,)), report: Edge.terminal()},
)


# -- events and retries ----------------------------------------------------------------------


async def narrate(steps: int, ctx: AgentContext) -> int:
    """Reports ``steps`` events of its own, numbered, then returns how many."""
    for step in range(steps):
        await ctx.emit(EventType.CHILD_SPAWNED, data={"step": step})
    return steps


#: Usage ``flaky`` reports on every attempt.
FLAKY_USAGE = murmur.Usage(input_tokens=10, output_tokens=4, requests=1)


async def flaky(text: str, ctx: AgentContext) -> str:
    """Times out on its first attempt (after spending ``FLAKY_USAGE``), then answers."""
    ctx.report_usage(FLAKY_USAGE)
    if ctx.attempt < 2:
        raise AgentTimeoutError(f"attempt {ctx.attempt} of {text!r} timed out")
    return f"{text} on attempt {ctx.attempt}"


async def disconnects(text: str, ctx: AgentContext) -> str:
    """Loses its connection on its first attempt (a transient failure), then answers."""
    if ctx.attempt < 2:
        raise ConnectionError(f"connection lost on attempt {ctx.attempt}")
    return f"{text} on attempt {ctx.attempt}"


_stalled: set[str] = set()


async def stall(text: str, ctx: AgentContext) -> str:
    """Reports an event, then hangs the first time this process runs the task; answers
    when the task is delivered here again."""
    first = ctx.task.task_id not in _stalled
    _stalled.add(ctx.task.task_id)
    await ctx.emit(EventType.CHILD_SPAWNED, data={"redelivered": not first})
    if first:
        await anyio.sleep_forever()
    return text


# -- redelivery: tasks a test holds, and runs it counts --------------------------------------


class Gated(BaseModel):
    """A task ``gated`` holds until its gate opens."""

    label: str
    #: A path: the task finishes once it exists.
    gate: str
    #: A path: each run of the task appends a line ``<label> <pid>`` to it.
    runs: str


async def gated(task: Gated, ctx: AgentContext) -> str:
    """Notes its run in ``task.runs``, reports an event, then returns its label once the
    file ``task.gate`` exists (runs in any process: a killed worker's show too)."""
    with Path(task.runs).open("a") as runs:
        runs.write(f"{task.label} {os.getpid()}\n")
    await ctx.emit(EventType.CHILD_SPAWNED, data={"label": task.label})
    gate = Path(task.gate)
    while not gate.exists():
        await anyio.sleep(0.01)
    return task.label


#: How many times ``lengthy`` started each task, in this process.
lengthy_runs: Counter[str] = Counter()


async def lengthy(seconds: float, ctx: AgentContext) -> int:
    """Works for ``seconds`` (a long task); returns how many times this process started it."""
    lengthy_runs[ctx.task.task_id] += 1
    await anyio.sleep(seconds)
    return lengthy_runs[ctx.task.task_id]


# -- cancellation, observed where the tasks run ------------------------------------------


class Meter(BaseModel):
    """One task of a batch that records, as files in ``dir``, what it does on the worker:
    ``started-<index>`` when it starts, ``done-<index>`` when it returns, ``stopped-<index>``
    when it stops without returning (cancelled: it spends nothing more)."""

    dir: str
    index: int
    #: The first ``quick`` tasks of the batch to start in a worker process return at once;
    #: the others run until cancelled.
    quick: int = 0
    #: If > 0, the batch's first task to start fails once this many of the batch started.
    fail_when: int = 0


_arrivals: Counter[str] = Counter()


async def metered(job: Meter) -> int:
    """Returns ``job.index`` (quick tasks), fails (the first under ``fail_when``), or runs
    until cancelled, recording each step in ``job.dir``."""
    folder = Path(job.dir)
    folder.mkdir(parents=True, exist_ok=True)
    arrival = _arrivals[job.dir]
    _arrivals[job.dir] += 1
    (folder / f"started-{job.index}").touch()
    if arrival < job.quick:
        (folder / f"done-{job.index}").touch()
        return job.index
    try:
        if job.fail_when and arrival == 0:
            while len(list(folder.glob("started-*"))) < job.fail_when:
                await anyio.sleep(0.01)
            raise ValueError(f"metered task {job.index} fails first")
        await anyio.sleep_forever()
    finally:
        (folder / f"stopped-{job.index}").touch()
    raise AssertionError("unreachable")
