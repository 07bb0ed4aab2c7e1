"""The PyPI package murmur-runtime 0.1.0 on Redis, for the distributed scenario (runs in its
own virtualenv: it installs the import name ``murmur`` too).

murmur-runtime's agents are pydantic-ai agents (a ``murmur.Agent`` spec with a model, a
``BaseModel`` output type and instructions); it has no plain-function agents, so its
"no-op" task is an agent on a pydantic-ai ``FunctionModel`` that answers at once with a
structured ``Answer(value=x)``: each task also runs one pydantic-ai agent (~1-3 ms of
CPU), which the other systems' no-op tasks do not.

Worker: ``python murmur_runtime_queue.py worker`` does what its ``murmur worker start``
command does (that command reads agents from YAML specs, which cannot name a
``FunctionModel``): ``murmur.worker.Worker(broker=..., agents=..., concurrency=C,
prefetch=P)`` on the broker of ``AgentRuntime(broker=url)``, with its default event
emitter (structlog output sent to /dev/null); it prints ``bench-worker-ready`` once
started. Caller: ``python murmur_runtime_queue.py`` (see ``_queue_caller``):
``AgentRuntime(broker=url).gather(agent, tasks)`` and ``.run(agent, task)``. Keys: the
task stream ``murmur.<prefix>-noop.tasks`` and the caller's reply stream
``murmur.results.<prefix>-caller``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import structlog
from _queue_caller import config, serve
from pydantic import BaseModel
from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from murmur import Agent, AgentRuntime, TaskSpec

CONFIG = config()
PREFIX: str = CONFIG["prefix"]
CAP: int = CONFIG.get("cap", 200)


class Answer(BaseModel):
    value: int


def _answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    prompt = messages[-1].parts[-1].content  # type: ignore[union-attr]
    return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"value": int(prompt)})])


AGENT = Agent(
    name=f"{PREFIX}-noop",
    model=FunctionModel(_answer),
    output_type=Answer,
    instructions="Echo the number.",
)
_runtime: Any = None


def _quiet() -> None:
    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sink))


async def _serve_worker() -> None:
    from murmur.worker.worker import Worker

    broker = AgentRuntime(broker=CONFIG["url"]).backend._broker
    worker = Worker(
        broker=broker,
        agents={AGENT.name: AGENT},
        concurrency=CONFIG.get("concurrency", 10),
        prefetch=CONFIG.get("prefetch", 5),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (15, 2):
        loop.add_signal_handler(signum, stop.set)
    await worker.start()
    print("bench-worker-ready", flush=True)
    try:
        await stop.wait()
    finally:
        await worker.stop()


async def _setup() -> None:
    global _runtime
    _runtime = AgentRuntime(broker=CONFIG["url"], runtime_id=f"{PREFIX}-caller")
    await _runtime.backend.start()


def _value(result: Any) -> int:
    if not result.is_ok():
        raise RuntimeError(f"task failed: {result.error!r}")
    value: int = result.output.value
    return value


async def _batch(ids: list[int]) -> list[int]:
    tasks = [TaskSpec(input=str(x)) for x in ids]
    return [_value(r) for r in await _runtime.gather(AGENT, tasks, max_concurrency=CAP)]


async def _one(x: int) -> int:
    return _value(await _runtime.run(AGENT, TaskSpec(input=str(x))))


async def _close() -> None:
    await _runtime.backend.stop()
    await _runtime.shutdown()


if __name__ == "__main__":
    _quiet()
    if sys.argv[1:] == ["worker"]:
        asyncio.run(_serve_worker())
        sys.exit(0)
    sys.exit(serve(_setup, _batch, _one, _close, dists=("murmur-runtime", "pydantic-ai-slim")))
