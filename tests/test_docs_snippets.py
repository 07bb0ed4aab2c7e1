"""Every Python block of README.md and docs/ runs as written (conventions: tests/snippets.py).

Notebook blocks (top-level ``await``) and complete programs (``anyio.run(main)``) run on
asyncio and on Trio unless the block names its backend; what a block shows as a ``print``
comment is checked against what it prints. Blocks that name a broker run on the local Redis,
with a real worker process when they call agents.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import snippets
from distributed.brokers import delete_redis_keys, require
from snippets import Block
from workers import WorkerProcess, command_env

#: A bound on one block (a broken block fails instead of hanging the suite).
BLOCK_SECONDS = 60.0

BLOCKS = snippets.all_blocks()
RUNNABLE = [b for b in BLOCKS if "compile-only" not in b.directives]
NOTEBOOK = [(b, backend) for b in RUNNABLE if b.runner() is None for backend in b.backends()]
SCRIPTS = [(b, backend) for b in RUNNABLE if b.runner() is not None for backend in b.backends()]


def _ids(cases: list[tuple[Block, str]]) -> list[str]:
    return [f"{block.id}-{backend}" for block, backend in cases]


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block_compiles_and_imports_what_it_uses(block: Block) -> None:
    block.compile()
    missing = snippets.unimported_murmur_names(block)
    assert not missing, f"{block.id} imports things but not {sorted(missing)} from murmur"
    if "compile-only" in block.directives:
        assert block.directives["compile-only"], f"{block.id}: compile-only needs a reason"


def test_every_page_is_collected() -> None:
    pages = {b.page for b in BLOCKS}
    assert "README.md" in pages
    assert {"docs/concepts.md", "docs/policies.md", "docs/events.md"} <= pages
    # Compile-only is the exception, not the rule.
    assert len(RUNNABLE) >= 0.9 * len(BLOCKS)


@pytest.fixture
def broker(block: Block, monkeypatch: pytest.MonkeyPatch) -> Iterator[str | None]:
    """The local Redis in a namespace of its own when the block names a broker, with a worker
    serving tests/myproject/agents.py when the block calls agents; cleaned up after."""
    if not block.uses_broker():
        yield None
        return
    url = require("redis")
    namespace = f"docs-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MURMUR_NAMESPACE", namespace)
    worker = None
    try:
        if block.calls_agents():
            worker = WorkerProcess(
                "--app",
                "myproject.agents",
                "--broker",
                url,
                "--log-format",
                "json",
                env=command_env(MURMUR_NAMESPACE=namespace),
            )
            worker.next_event("worker.started")
        yield url
        if worker is not None:
            assert worker.stop() == 0, worker.output()
    finally:
        if worker is not None:
            worker.close()
        delete_redis_keys(namespace, url)


async def _feed(sse: Any) -> None:
    """Once the block subscribes, run a batch of ``writer`` (one task fails) into ``sse``."""
    from murmur import AgentRuntime, TaskSpec

    await sse.wait_for_subscribers(1)
    async with AgentRuntime(event_emitter=sse) as runtime:
        await runtime.gather(
            snippets.standins()["writer"], [TaskSpec(input=t) for t in ("poems", "fail")]
        )
    sse.close()


@pytest.mark.anyio
@pytest.mark.parametrize(("block", "anyio_backend"), NOTEBOOK, ids=_ids(NOTEBOOK))
async def test_notebook_block(block: Block, anyio_backend: str, broker: str | None) -> None:
    prints = snippets.Prints(block.page)
    namespace = snippets.namespace_for(block, prints)
    code = snippets.runnable_code(block, broker)
    try:
        with anyio.fail_after(BLOCK_SECONDS):
            async with anyio.create_task_group() as tg:
                if "feed-sse" in block.directives:
                    tg.start_soon(_feed, namespace["sse"])
                outcome = eval(code, namespace)
                if outcome is not None:
                    await outcome
    finally:
        await snippets.close_all(namespace)
    prints.check(block)


@pytest.mark.parametrize(("block", "backend"), SCRIPTS, ids=_ids(SCRIPTS))
def test_program_block(block: Block, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = anyio.run

    def run_on_backend(func: Any, *args: Any, backend_options: Any = None, **_: Any) -> Any:
        return real_run(func, *args, backend=backend, backend_options=backend_options)

    monkeypatch.setattr(anyio, "run", run_on_backend)
    prints = snippets.Prints(block.page)
    namespace = snippets.namespace_for(block, prints)
    failures: list[BaseException] = []
    client = None
    if "sse-client" in block.directives:
        body = snippets.read_sse(block.directives["sse-client"], BLOCK_SECONDS, failures)
        client = threading.Thread(target=body, name="docs-sse-client", daemon=True)
        client.start()
    try:
        exec(snippets.runnable_code(block, None), namespace)
    finally:
        sys.modules.pop(namespace["__name__"], None)
        if client is not None:
            client.join(BLOCK_SECONDS)
        namespace["sse"].close()
    assert not failures, failures
    assert client is None or not client.is_alive(), "the SSE client never finished"
    prints.check(block)


def test_a_wrong_output_comment_fails() -> None:
    """The output check itself: the comment must match what the line printed."""
    block = Block("page.md", 1, 'for w in "ab":\n    print(w.upper(), 2)  # A 2, ...\n')
    prints = snippets.Prints("page.md")
    exec(block.compile(), {"print": prints})
    prints.check(block)
    wrong = Block("page.md", 1, 'print("HELLO", 1)  # HELLO 2\n')
    prints = snippets.Prints("page.md")
    exec(wrong.compile(), {"print": prints})
    with pytest.raises(AssertionError, match="the page says 'HELLO 2'"):
        prints.check(wrong)
    never = Block("page.md", 1, 'if False:\n    print("x")  # x\n')
    prints = snippets.Prints("page.md")
    exec(never.compile(), {"print": prints})
    with pytest.raises(AssertionError, match="never ran"):
        prints.check(never)


def test_model_strings_become_the_offline_model() -> None:
    block = Block("page.md", 1, 'a = Agent(name="x", model="openai:gpt-4o")\nb = Agent("x:y")\n')
    seen: dict[str, Any] = {"Agent": lambda *a, **k: (a, k), "OFFLINE_MODEL": "offline"}
    exec(snippets.runnable_code(block, None), seen)
    assert seen["a"] == ((), {"name": "x", "model": "offline"})
    assert seen["b"] == (("offline",), {})


def test_the_api_reference_covers_every_public_name() -> None:
    """Every name of ``murmur.__all__`` is on an API reference page (mkdocstrings), directly
    or through the public subpackage that exports it; every public subpackage has a page."""
    import importlib

    import murmur

    reference = snippets.REPO / "docs" / "reference"
    text = "\n".join(p.read_text() for p in reference.glob("*.md"))
    documented_modules = {
        module
        for module in ("events", "middleware", "groups", "transport", "distributed", "errors")
        if f"::: murmur.{module}\n" in text
    }
    assert len(documented_modules) == 6, documented_modules
    through_modules = {
        name
        for module in documented_modules
        for name in importlib.import_module(f"murmur.{module}").__all__
    }
    missing = [
        name
        for name in murmur.__all__
        if f"::: murmur.{name}\n" not in text and name not in through_modules
    ]
    assert missing == ["__version__"], missing
    assert "`__version__`" in text
