"""Under Trio, pydantic-ai agents run on an asyncio loop in a helper thread (the bridge).

Every test here runs on Trio only. Cross-thread signals use ``threading.Event`` waited for
through ``anyio.to_thread.run_sync``; the timeouts on those waits only stop a broken test
from hanging, they never decide an outcome.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import weakref
from typing import Any

import anyio
import pytest
import sniffio
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import murmur
from murmur import (
    AgentResult,
    AgentRuntime,
    RuntimeClosedError,
    TaskCancelledError,
    TaskSpec,
    current_context,
    from_pydantic_ai,
)
from support import cancel_when_ready

pytestmark = pytest.mark.anyio

HANG_GUARD = 30.0  # seconds; only reached if the behaviour under test is broken


@pytest.fixture
def anyio_backend() -> str:
    """The bridge exists only under Trio."""
    return "trio"


def bridge_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("murmur-")]


async def wait_for(event: threading.Event) -> None:
    """Wait from Trio for an event set on the bridge thread."""
    assert await anyio.to_thread.run_sync(event.wait, HANG_GUARD), "event never set"


class Blocker:
    """A FunctionModel function that blocks on an asyncio.Event and records how it ended."""

    def __init__(self, expected: int = 1) -> None:
        self.expected = expected
        self.lock = threading.Lock()
        self.started = 0
        self.all_started = threading.Event()
        self.cancelled = 0
        self.cleaned_up = 0
        self.completed = 0

    async def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        with self.lock:
            self.started += 1
            if self.started == self.expected:
                self.all_started.set()
        try:
            await asyncio.Event().wait()  # never set: only cancellation ends this
            with self.lock:
                self.completed += 1
        except asyncio.CancelledError:
            with self.lock:
                self.cancelled += 1
            raise
        finally:
            with self.lock:
                self.cleaned_up += 1
        return ModelResponse(parts=[TextPart("never")])


async def test_pydantic_ai_agents_run_on_an_asyncio_loop_in_a_helper_thread(
    runtime: AgentRuntime,
) -> None:
    seen: list[tuple[str, str, bool]] = []
    caller_thread = threading.current_thread()

    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        thread = threading.current_thread()
        asyncio.get_running_loop()  # a real asyncio loop runs here
        seen.append((thread.name, sniffio.current_async_library(), thread is caller_thread))
        await anyio.lowlevel.checkpoint()  # anyio sees asyncio here, not Trio
        return ModelResponse(parts=[TextPart("from asyncio")])

    assert sniffio.current_async_library() == "trio"
    for agent in (
        murmur.Agent(name="spec", model=FunctionModel(model_fn)),
        from_pydantic_ai(PydanticAgent(FunctionModel(model_fn))),
        PydanticAgent(FunctionModel(model_fn)),
    ):
        result = await runtime.run(agent, TaskSpec(input="hi"))
        assert result.unwrap() == "from asyncio"
    assert seen == [("murmur-asyncio-bridge", "asyncio", False)] * 3
    assert sniffio.current_async_library() == "trio"


async def test_function_agents_run_natively_on_trio(runtime: AgentRuntime) -> None:
    seen: list[str] = []

    async def fn(value: str) -> str:
        seen.append(sniffio.current_async_library())
        return value

    before = bridge_threads()
    assert (await runtime.run(fn, TaskSpec(input="x"))).unwrap() == "x"
    assert seen == ["trio"]
    assert bridge_threads() == before  # no helper thread was needed


async def test_one_bridge_thread_per_runtime_reused_across_calls() -> None:
    threads: list[threading.Thread] = []

    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        threads.append(threading.current_thread())
        return ModelResponse(parts=[TextPart("ok")])

    agent = from_pydantic_ai(PydanticAgent(FunctionModel(model_fn)))
    async with AgentRuntime() as first, AgentRuntime() as second:
        await first.run(agent, TaskSpec(input="a"))
        await first.gather(agent, [TaskSpec(input="b"), TaskSpec(input="c")])
        await second.run(agent, TaskSpec(input="d"))
    assert threads[0] is threads[1] is threads[2]
    assert threads[3] is not threads[0]
    assert not any(t.is_alive() for t in threads)


async def test_gathered_calls_run_concurrently_on_the_bridge(runtime: AgentRuntime) -> None:
    count = 5
    arrived = 0
    everyone: list[asyncio.Event] = []  # made on the bridge loop by the first call

    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal arrived
        if not everyone:  # only the bridge thread runs this function
            everyone.append(asyncio.Event())
        arrived += 1
        if arrived == count:
            everyone[0].set()
        await everyone[0].wait()  # returns only once every call is in flight at once
        return ModelResponse(parts=[TextPart(str(arrived))])

    agent = murmur.Agent(name="together", model=FunctionModel(model_fn))
    results = await runtime.gather(agent, [TaskSpec(input=str(i)) for i in range(count)])
    assert [r.unwrap() for r in results] == [str(count)] * count


async def test_cancelling_the_trio_caller_cancels_the_asyncio_call(
    runtime: AgentRuntime,
) -> None:
    blocker = Blocker()
    agent = from_pydantic_ai(PydanticAgent(FunctionModel(blocker)))

    outcome = await cancel_when_ready(
        lambda: runtime.run(agent, TaskSpec(input="x")), lambda: wait_for(blocker.all_started)
    )

    assert outcome.cancelled_caught
    # The caller got back only once the asyncio side had really stopped.
    assert (blocker.cancelled, blocker.cleaned_up, blocker.completed) == (1, 1, 0)
    assert outcome.returned == []
    assert len(outcome.propagated) == 1
    # The bridge is still usable afterwards.
    ok = await runtime.run(PydanticAgent(FunctionModel(_ok_model)), TaskSpec(input="again"))
    assert ok.unwrap() == "ok"


async def _ok_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("ok")])


async def test_cancelling_a_trio_gather_cancels_every_asyncio_call(
    runtime: AgentRuntime,
) -> None:
    count = 6
    blocker = Blocker(expected=count)
    agent = murmur.Agent(name="stuck", model=FunctionModel(blocker))

    outcome = await cancel_when_ready(
        lambda: runtime.gather(agent, [TaskSpec(input=str(i)) for i in range(count)]),
        lambda: wait_for(blocker.all_started),
    )

    assert outcome.cancelled_caught
    assert (blocker.cancelled, blocker.cleaned_up, blocker.completed) == (count, count, 0)
    assert outcome.returned == []


async def test_fail_fast_under_trio_cancels_asyncio_calls(runtime: AgentRuntime) -> None:
    blocker = Blocker(expected=3)
    all_started = blocker.all_started

    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        prompt = messages[0].parts[-1].content  # type: ignore[union-attr]
        if prompt == "fail":
            assert await anyio.to_thread.run_sync(all_started.wait, HANG_GUARD)
            raise ValueError("asyncio-side failure")
        return await blocker(messages, info)

    agent = murmur.Agent(name="mixed", model=FunctionModel(model_fn))
    tasks = [TaskSpec(input="fail"), *(TaskSpec(input=str(i)) for i in range(3))]
    results = await runtime.gather(agent, tasks, fail_fast=True)
    assert isinstance(results[0].error, ValueError)
    assert all(isinstance(r.error, TaskCancelledError) for r in results[1:])
    assert (blocker.cancelled, blocker.cleaned_up, blocker.completed) == (3, 3, 0)


async def test_an_asyncio_side_exception_surfaces_on_the_trio_side(
    runtime: AgentRuntime,
) -> None:
    boom = LookupError("raised on the asyncio loop")

    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise boom

    result = await runtime.run(PydanticAgent(FunctionModel(model_fn)), TaskSpec(input="x"))
    assert not result.is_ok()
    assert result.error is boom
    with pytest.raises(LookupError, match="raised on the asyncio loop"):
        result.unwrap()


async def test_after_aclose_no_bridge_thread_is_alive() -> None:
    threads: list[threading.Thread] = []

    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        threads.append(threading.current_thread())
        return ModelResponse(parts=[TextPart("ok")])

    runtime = AgentRuntime()
    result = await runtime.run(PydanticAgent(FunctionModel(model_fn)), TaskSpec(input="x"))
    assert result.unwrap() == "ok"
    (thread,) = threads
    assert thread.is_alive()
    await runtime.aclose()
    assert not thread.is_alive()
    assert thread not in bridge_threads()
    with pytest.raises(RuntimeClosedError):
        await runtime.run(PydanticAgent(FunctionModel(model_fn)), TaskSpec(input="x"))


async def test_aclose_ends_a_call_still_running_on_the_bridge() -> None:
    blocker = Blocker()
    agent = from_pydantic_ai(PydanticAgent(FunctionModel(blocker)))
    before = bridge_threads()
    runtime = AgentRuntime()
    results: list[AgentResult[Any]] = []

    async def caller() -> None:
        results.append(await runtime.run(agent, TaskSpec(input="x")))

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await wait_for(blocker.all_started)
        await runtime.aclose()

    (result,) = results
    assert isinstance(result.error, RuntimeClosedError)
    assert (blocker.cancelled, blocker.cleaned_up, blocker.completed) == (1, 1, 0)
    assert bridge_threads() == before


async def test_an_unclosed_runtime_works_and_its_thread_goes_when_collected() -> None:
    threads: list[threading.Thread] = []

    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        threads.append(threading.current_thread())
        return ModelResponse(parts=[TextPart("ok")])

    agent = murmur.Agent(name="unclosed", model=FunctionModel(model_fn))
    runtime = AgentRuntime()  # never closed
    assert (await runtime.run(agent, TaskSpec(input="1"))).unwrap() == "ok"
    results = await runtime.gather(agent, [TaskSpec(input="2"), TaskSpec(input="3")])
    assert [r.unwrap() for r in results] == ["ok", "ok"]
    # A failed call (its error holds a traceback) must not pin the runtime either.
    failing = from_pydantic_ai(PydanticAgent(FunctionModel(_failing_model)))
    assert isinstance((await runtime.run(failing, TaskSpec(input="4"))).error, ValueError)
    (thread,) = set(threads)
    assert thread.is_alive()
    # The loop thread wakes the caller from a call's done callback, and may still hold
    # that callback (and the call's context) for a moment: let it finish its turn first.
    loop = runtime._core._bridge.loop  # type: ignore[union-attr]
    await anyio.to_thread.run_sync(
        lambda: asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(HANG_GUARD)
    )

    collected = weakref.ref(runtime)
    del runtime, results
    gc.collect()
    assert collected() is None, "nothing should keep an unused runtime alive"
    thread.join(timeout=HANG_GUARD)
    assert not thread.is_alive()


async def _failing_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    raise ValueError("model failed")


async def test_a_runtime_dropped_on_its_own_bridge_thread_still_stops_it() -> None:
    """The last reference to an unclosed runtime may go away on its bridge thread itself
    (here: a background asyncio task started by the model keeps it until released). Its
    finaliser then runs on that thread, which must still stop the loop and end the thread.
    """
    threads: list[threading.Thread] = []
    loops: list[asyncio.AbstractEventLoop] = []
    releases: list[asyncio.Event] = []
    background: set[asyncio.Task[None]] = set()
    keeper_done = threading.Event()

    async def keep(holder: list[AgentRuntime]) -> None:
        release = asyncio.Event()
        releases.append(release)
        await release.wait()
        holder.clear()  # the last reference to the runtime goes away here, on the bridge
        gc.collect()
        background.clear()
        keeper_done.set()

    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        threads.append(threading.current_thread())
        loop = asyncio.get_running_loop()
        loops.append(loop)
        holder = [current_context().runtime]
        # A fresh context, so that the background task holds the runtime only via `holder`.
        background.add(loop.create_task(keep(holder), context=contextvars.Context()))
        return ModelResponse(parts=[TextPart("ok")])

    runtime = AgentRuntime()
    result = await runtime.run(PydanticAgent(FunctionModel(model_fn)), TaskSpec(input="x"))
    assert result.unwrap() == "ok"
    (thread,) = threads
    (loop,) = loops
    collected = weakref.ref(runtime)
    del runtime, result
    gc.collect()
    assert collected() is not None  # still held by the background task

    loop.call_soon_threadsafe(releases[0].set)
    await wait_for(keeper_done)
    await anyio.to_thread.run_sync(thread.join, HANG_GUARD)
    assert not thread.is_alive()
    assert collected() is None


class Abort(BaseException):
    """Not an Exception: must still cross the bridge, not vanish or kill its loop."""


@pytest.mark.parametrize("raised", [Abort("stop"), SystemExit(3), KeyboardInterrupt()])
async def test_a_base_exception_on_the_asyncio_side_is_re_raised_and_the_bridge_lives_on(
    runtime: AgentRuntime, raised: BaseException
) -> None:
    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise raised

    async def fine(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart("fine")])

    await runtime.run(PydanticAgent(FunctionModel(fine)), TaskSpec(input="warm-up"))
    bridge = runtime._core._bridge
    assert bridge is not None
    first_thread = bridge.thread
    assert first_thread is not None
    with anyio.fail_after(HANG_GUARD), pytest.raises(type(raised)) as caught:
        await runtime.run(PydanticAgent(FunctionModel(model_fn)), TaskSpec(input="x"))
    assert caught.value is raised  # the same object, not a success with output None
    # Raised in a task of pydantic-ai's, SystemExit and KeyboardInterrupt stop the asyncio
    # loop itself (asyncio re-raises them out of it); elsewhere the loop lives on. Either
    # way the next bridged call works, on a fresh loop if need be, and no thread is left.
    with anyio.fail_after(HANG_GUARD):
        result = await runtime.run(PydanticAgent(FunctionModel(fine)), TaskSpec(input="y"))
    assert result.unwrap() == "fine"
    if bridge.thread is not first_thread:
        await anyio.to_thread.run_sync(first_thread.join, HANG_GUARD)
        assert not first_thread.is_alive()
    assert [t for t in bridge_threads() if t.is_alive()] == [bridge.thread]


async def test_a_loop_killed_under_a_call_wakes_every_caller_and_a_fresh_loop_follows() -> None:
    from murmur._bridge import AsyncioBridge

    bridge = AsyncioBridge()
    stuck = threading.Event()

    async def raise_exit() -> None:
        raise SystemExit(7)

    async def kills_the_loop() -> None:
        # SystemExit in a task of its own: asyncio re-raises it out of run_forever().
        await asyncio.get_running_loop().create_task(raise_exit())

    async def waits() -> None:
        stuck.set()
        await asyncio.Event().wait()

    try:
        outcomes: list[BaseException] = []

        async def call(fn: Any) -> None:
            try:
                await bridge.run(fn)
            except BaseException as exc:  # recording what crossed over
                outcomes.append(exc)

        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, waits)
                await wait_for(stuck)
                first_thread = bridge.thread
                assert first_thread is not None
                tg.start_soon(call, kills_the_loop)
        # Both callers were woken with the exception that stopped the loop.
        assert [type(e) for e in outcomes] == [SystemExit, SystemExit]
        await anyio.to_thread.run_sync(first_thread.join, HANG_GUARD)
        assert not first_thread.is_alive()

        async def answer() -> int:
            return 42

        with anyio.fail_after(HANG_GUARD):
            assert await bridge.run(answer) == 42
        assert bridge.thread is not first_thread
    finally:
        await bridge.aclose()
    assert not any(t.is_alive() for t in bridge_threads())


async def test_a_background_task_left_on_the_bridge_cannot_spawn_after_its_agent(
    runtime: AgentRuntime,
) -> None:
    go, tried = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    background: set[asyncio.Task[None]] = set()

    async def child(value: int) -> int:
        return value

    async def later(ctx: murmur.AgentContext) -> None:
        await asyncio.to_thread(go.wait, HANG_GUARD)  # until the agent's task is over
        try:
            await ctx.run(child, TaskSpec(input=1))
        except RuntimeError as exc:
            errors.append(exc)
        finally:
            tried.set()

    async def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        task = asyncio.get_running_loop().create_task(later(current_context()))
        background.add(task)
        return ModelResponse(parts=[TextPart("left something behind")])

    result = await runtime.run(
        murmur.Agent(name="leaves", model=FunctionModel(model_fn)), TaskSpec(input="x")
    )
    assert result.unwrap() == "left something behind"
    go.set()
    await wait_for(tried)
    (error,) = errors
    assert "is over" in str(error)
