"""The in-process workloads, expressed for the PyPI package ``murmur-runtime`` 0.1.0.

Runs inside that package's own virtualenv (``benchmarks/.venvs/murmur-runtime-0.1.0``),
never in this project's: both install the import name ``murmur``. It must stay
self-contained (nothing from this repository is importable here). Invoked as

    <venv>/bin/python murmur_runtime_peer.py '<json config>'

and prints one JSON line with raw timings; the parent computes the statistics.

What murmur-runtime 0.1.0 offers (read from its installed source): ``murmur.Agent`` is a
frozen pydantic spec wrapping a pydantic-ai model — ``output_type`` must be a pydantic
``BaseModel`` and ``instructions`` is required; ``TaskSpec.input`` is a ``str``;
``AgentRuntime().gather(agent, tasks, max_concurrency=...)`` runs an asyncio worker pool
(``AsyncBackend.gather``) that builds a fresh ``pydantic_ai.Agent`` and an
``asyncio.Task`` per task and emits events through ``RuntimeOptions``/``event_emitter``
(default: ``LogEventEmitter``, structlog). The workloads below follow that API.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from pydantic import BaseModel
from pydantic_ai import Agent as PydanticAIAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import murmur
from murmur import Agent, AgentRuntime, TaskSpec
from murmur.events.multi import MultiEventEmitter

IMPL_PEER_OFF = "murmur-runtime (events off)"
IMPL_PEER_DEFAULT = "murmur-runtime (default log events)"
IMPL_PYDANTIC_AI = "asyncio.gather+Semaphore"
SLEEP_S = 0.01

NOT_EXPRESSIBLE = {
    "noop": (
        "no-op function agents: murmur-runtime 0.1.0 has no plain async-function agents "
        "(every agent is a murmur.Agent wrapping a pydantic-ai model, with a BaseModel "
        "output_type), so the no-op overhead and the 1k-100k scaling workloads have no "
        "equivalent; the FunctionModel workloads are measured instead"
    ),
    "io-sleep": (
        "cap fidelity with I/O-bound function agents: same reason; measured with a "
        "FunctionModel whose async model sleeps 10 ms instead"
    ),
    "trio": (
        "Trio and AnyIO backends: AsyncBackend is asyncio-only (asyncio.create_task, "
        "asyncio.Queue, asyncio.timeout); only asyncio runs are possible"
    ),
    "taskspec": (
        "TaskSpec.input is str only (structured inputs go through Agent.input_type as JSON); "
        "the workloads use string prompts"
    ),
}


class Answer(BaseModel):
    text: str


class InFlight:
    def __init__(self) -> None:
        self.current = 0
        self.peak = 0

    def enter(self) -> None:
        self.current += 1
        self.peak = max(self.peak, self.current)

    def exit(self) -> None:
        self.current -= 1


TRACKER = InFlight()


def _answer(info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"text": "ok"})])


def _model_sync(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return _answer(info)


async def _model_sleep(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    TRACKER.enter()
    try:
        await asyncio.sleep(SLEEP_S)
    finally:
        TRACKER.exit()
    return _answer(info)


MODELS: dict[str, Callable[..., Any]] = {
    "fm-structured": _model_sync,
    "fm-structured-sleep": _model_sleep,
}


def _peer_agent(workload: str) -> Agent:
    return Agent(
        name=workload,
        model=FunctionModel(MODELS[workload]),
        output_type=Answer,
        instructions="Answer.",
    )


def _pydantic_ai_agent(workload: str) -> PydanticAIAgent[None, Answer]:
    return PydanticAIAgent(
        FunctionModel(MODELS[workload]), output_type=Answer, instructions="Answer."
    )


async def _timed(call: Callable[[], Awaitable[list[Any]]]) -> tuple[float, float, list[Any]]:
    gc.collect()
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    out = await call()
    return time.perf_counter() - wall0, time.process_time() - cpu0, out


def _run_peer(agent: Agent, prompts: list[str], cap: int, events: bool) -> dict[str, Any]:
    specs = [TaskSpec(input=p) for p in prompts]

    async def main() -> tuple[float, float, list[Any]]:
        runtime = AgentRuntime() if events else AgentRuntime(event_emitter=MultiEventEmitter([]))
        return await _timed(lambda: runtime.gather(agent, specs, max_concurrency=cap))

    TRACKER.peak = 0
    wall, cpu, results = asyncio.run(main())
    failed = [r for r in results if not r.is_ok()]
    ok = len(results) == len(prompts) and not failed and results[-1].output.text == "ok"
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak": TRACKER.peak,
        "ok": ok,
        "error": None if ok else repr(failed[0].error if failed else results[-1].output),
    }


def _run_pydantic_ai(
    agent: PydanticAIAgent[None, Answer], prompts: list[str], cap: int
) -> dict[str, Any]:
    async def main() -> tuple[float, float, list[Any]]:
        async def batch() -> list[Any]:
            semaphore = asyncio.Semaphore(cap)

            async def one(prompt: str) -> Any:
                async with semaphore:
                    return (await agent.run(prompt)).output

            return await asyncio.gather(*[one(p) for p in prompts])

        return await _timed(batch)

    TRACKER.peak = 0
    wall, cpu, outputs = asyncio.run(main())
    ok = len(outputs) == len(prompts) and outputs[-1] == Answer(text="ok")
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak": TRACKER.peak,
        "ok": ok,
        "error": None if ok else repr(outputs[-1]),
    }


def _cell(spec: dict[str, Any]) -> dict[str, Any]:
    workload: str = spec["workload"]
    n: int = spec["n"]
    cap: int = spec["cap"]
    impls: list[str] = spec["impls"]
    peer = _peer_agent(workload)
    plain = _pydantic_ai_agent(workload)
    prompts = [f"task {i}" for i in range(n)]

    def once(impl: str, items: list[str]) -> dict[str, Any]:
        if impl == IMPL_PYDANTIC_AI:
            return _run_pydantic_ai(plain, items, cap)
        return _run_peer(peer, items, cap, events=impl == IMPL_PEER_DEFAULT)

    for impl in impls:  # warm-up, not recorded
        once(impl, prompts[:20])
    runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    for rep in range(spec["reps"]):
        for k in range(len(impls)):
            impl = impls[(rep + k) % len(impls)]
            runs[impl].append(once(impl, prompts))
    return {
        "workload": workload,
        "n": n,
        "cap": cap,
        "results": [
            {
                "impl": impl,
                "wall_s": [r["wall_s"] for r in items],
                "cpu_s": [r["cpu_s"] for r in items],
                "peak": max(r["peak"] for r in items),
                "errors": [r["error"] for r in items if not r["ok"]],
            }
            for impl, items in runs.items()
        ],
    }


def main(argv: list[str]) -> int:
    config = json.loads(argv[0])
    # The default emitter logs every event through structlog; keep it, but discard the
    # rendered lines (stdout carries the JSON result).
    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sink))
    cells = [_cell(spec) for spec in config["cells"]]
    out = {
        "peer": "murmur-runtime",
        "version": importlib.metadata.version("murmur-runtime"),
        "pydantic_ai": importlib.metadata.version("pydantic-ai-slim"),
        "python": sys.version.split()[0],
        "murmur_file": murmur.__file__,
        "cells": cells,
        "not_expressible": NOT_EXPRESSIBLE,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
