"""Runtime lifecycle: async with, aclose, use after close, and the sync entry points."""

from __future__ import annotations

import threading

import anyio
import pytest
import sniffio
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import murmur
from murmur import (
    AgentContext,
    AgentRuntime,
    MurmurError,
    RuntimeClosedError,
    RuntimeOptions,
    TaskSpec,
)

pytestmark = pytest.mark.anyio


async def echo(value: object) -> object:
    return value


async def upper_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    prompt = messages[0].parts[-1].content  # type: ignore[union-attr]
    assert isinstance(prompt, str)
    return ModelResponse(parts=[TextPart(prompt.upper())])


def murmur_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("murmur-")]


async def test_async_with_yields_a_working_runtime() -> None:
    async with AgentRuntime() as runtime:
        assert isinstance(runtime, AgentRuntime)
        result = await runtime.run(echo, TaskSpec(input=1))
        assert result.unwrap() == 1
    with pytest.raises(RuntimeClosedError):
        await runtime.run(echo, TaskSpec(input=1))


async def test_async_with_closes_on_error() -> None:
    with pytest.raises(KeyError):
        async with AgentRuntime() as runtime:
            raise KeyError("inside")
    with pytest.raises(RuntimeClosedError):
        await runtime.run(echo, TaskSpec(input=1))


async def test_aclose_is_idempotent() -> None:
    runtime = AgentRuntime()
    await runtime.run(echo, TaskSpec(input=1))
    await runtime.aclose()
    await runtime.aclose()
    async with AgentRuntime() as other:
        await other.aclose()  # closing inside `async with` is fine too
    await other.aclose()


async def test_a_runtime_that_was_never_used_closes_cleanly() -> None:
    runtime = AgentRuntime()
    await runtime.aclose()
    with pytest.raises(RuntimeClosedError):
        await runtime.gather(echo, [TaskSpec(input=1)])


async def test_use_after_close_raises_runtime_closed_error() -> None:
    runtime = AgentRuntime()
    await runtime.aclose()
    pydantic_agent = murmur.Agent(name="m", model=FunctionModel(upper_model))
    for agent in (echo, pydantic_agent):
        with pytest.raises(RuntimeClosedError):
            await runtime.run(agent, TaskSpec(input="x"))
        with pytest.raises(RuntimeClosedError):
            await runtime.gather(agent, [TaskSpec(input="x")])
        with pytest.raises(RuntimeClosedError):
            await runtime.gather(agent, [])
    with pytest.raises(RuntimeClosedError):
        async with runtime:
            pass


async def test_runtime_closed_error_is_a_murmur_runtime_error() -> None:
    runtime = AgentRuntime()
    await runtime.aclose()
    with pytest.raises(RuntimeClosedError) as info:
        await runtime.run(echo, TaskSpec(input=1))
    assert isinstance(info.value, MurmurError)
    assert isinstance(info.value, RuntimeError)
    assert "closed" in str(info.value)


async def test_an_agent_cannot_spawn_on_a_closed_runtime() -> None:
    runtime = AgentRuntime()

    async def spawner(value: int, ctx: AgentContext) -> int:
        await ctx.runtime.aclose()
        child = await ctx.run(echo, TaskSpec(input=value))
        return int(child.unwrap())  # type: ignore[call-overload]

    result = await runtime.run(spawner, TaskSpec(input=1))
    assert isinstance(result.error, RuntimeClosedError)


async def test_closing_releases_the_bridge_on_every_backend() -> None:
    before = murmur_threads()
    runtime = AgentRuntime()
    result = await runtime.run(PydanticAgent(FunctionModel(upper_model)), TaskSpec(input="hi"))
    assert result.unwrap() == "HI"
    await runtime.aclose()
    assert murmur_threads() == before


async def test_runtime_options_are_exposed_and_validated() -> None:
    options = RuntimeOptions(max_concurrency=7)
    async with AgentRuntime(options=options) as runtime:
        assert runtime.options is options
    async with AgentRuntime() as runtime:
        assert runtime.options == RuntimeOptions()
    with pytest.raises(TypeError, match="RuntimeOptions"):
        AgentRuntime(options={"max_concurrency": 3})  # type: ignore[arg-type]


async def test_bad_constructor_arguments() -> None:
    with pytest.raises(TypeError, match="middleware"):
        AgentRuntime(middleware=[42])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="transport"):
        AgentRuntime(transport=object())  # type: ignore[arg-type]


# -- run_sync / gather_sync ------------------------------------------------------------------
# These are synchronous tests: they start their own event loop on the parametrised backend.


def test_run_sync(anyio_backend: str) -> None:
    runtime = AgentRuntime()
    try:
        result = runtime.run_sync(echo, TaskSpec(input="sync"), backend=anyio_backend)
        assert result.unwrap() == "sync"
        failing = runtime.run_sync(_fails, TaskSpec(input=1), backend=anyio_backend)
        assert isinstance(failing.error, ValueError)
    finally:
        anyio.run(runtime.aclose, backend=anyio_backend)


def test_gather_sync(anyio_backend: str) -> None:
    runtime = AgentRuntime()
    try:
        results = runtime.gather_sync(
            echo,
            [TaskSpec(input=i) for i in range(5)],
            max_concurrency=2,
            backend=anyio_backend,
        )
        assert [r.output for r in results] == [0, 1, 2, 3, 4]
    finally:
        anyio.run(runtime.aclose, backend=anyio_backend)


def test_gather_sync_fail_fast(anyio_backend: str) -> None:
    runtime = AgentRuntime()
    try:
        results = runtime.gather_sync(
            _fails,
            [TaskSpec(input=i) for i in range(3)],
            max_concurrency=1,
            fail_fast=True,
            backend=anyio_backend,
        )
        assert isinstance(results[0].error, ValueError)
        assert all(isinstance(r.error, murmur.TaskCancelledError) for r in results[1:])
    finally:
        anyio.run(runtime.aclose, backend=anyio_backend)


def test_sync_calls_with_a_pydantic_ai_agent(anyio_backend: str) -> None:
    before = murmur_threads()
    runtime = AgentRuntime()
    agent = murmur.Agent(name="sync-model", model=FunctionModel(upper_model))
    try:
        assert runtime.run_sync(agent, TaskSpec(input="a"), backend=anyio_backend).unwrap() == "A"
        results = runtime.gather_sync(
            agent, [TaskSpec(input="b"), TaskSpec(input="c")], backend=anyio_backend
        )
        assert [r.unwrap() for r in results] == ["B", "C"]
    finally:
        anyio.run(runtime.aclose, backend=anyio_backend)
    assert murmur_threads() == before


def test_one_runtime_across_several_sync_calls_and_backends(anyio_backend: str) -> None:
    runtime = AgentRuntime()
    agent = murmur.Agent(name="hop", model=FunctionModel(upper_model))
    other = "trio" if anyio_backend == "asyncio" else "asyncio"
    try:
        for backend in (anyio_backend, other, anyio_backend, other):
            assert runtime.run_sync(agent, TaskSpec(input=backend), backend=backend).unwrap() == (
                backend.upper()
            )
    finally:
        anyio.run(runtime.aclose)


def test_sync_calls_default_to_asyncio() -> None:
    runtime = AgentRuntime()

    async def which(value: object) -> str:
        return sniffio.current_async_library()

    try:
        assert runtime.run_sync(which, TaskSpec(input=None)).unwrap() == "asyncio"
        assert [r.output for r in runtime.gather_sync(which, [TaskSpec(input=None)])] == ["asyncio"]
    finally:
        anyio.run(runtime.aclose)


def test_sync_calls_after_close_raise(anyio_backend: str) -> None:
    runtime = AgentRuntime()
    anyio.run(runtime.aclose, backend=anyio_backend)
    with pytest.raises(RuntimeClosedError):
        runtime.run_sync(echo, TaskSpec(input=1), backend=anyio_backend)
    with pytest.raises(RuntimeClosedError):
        runtime.gather_sync(echo, [TaskSpec(input=1)], backend=anyio_backend)


async def _fails(value: object) -> None:
    raise ValueError(f"failed on {value}")
