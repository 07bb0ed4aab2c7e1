"""The agents a worker serves: what an app module defines, by name, and nothing else."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import murmur
from murmur import InvalidTypeError, InvalidValueError, TaskSpec
from murmur.distributed import AgentRegistry, DuplicateAgentError
from murmur.transport import Executor, TaskEnvelope


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder on ``sys.path`` for app modules; they are forgotten afterwards."""
    sys.path.insert(0, str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write_app(folder: Path, source: str, **others: str) -> str:
    """Write an app module (and modules it imports); return the app's module name."""
    suffix = uuid.uuid4().hex[:8]
    for name, text in others.items():
        (folder / f"{name}_{suffix}.py").write_text(textwrap.dedent(text).replace("SUFFIX", suffix))
    name = f"app_{suffix}"
    (folder / f"{name}.py").write_text(textwrap.dedent(source).replace("SUFFIX", suffix))
    return name


APP = """
    import murmur
    from pydantic_ai import Agent as PydanticAgent
    from pydantic_ai.models.test import TestModel

    from helpers_SUFFIX import imported_helper, registered_elsewhere

    researcher = murmur.Agent(name="researcher", model=TestModel())
    plain = PydanticAgent(TestModel(), name="plain")
    wrapped = murmur.from_pydantic_ai(PydanticAgent(TestModel()), name="wrapped")


    async def reviewer(text: str) -> str:
        return text + "!"


    async def _private(text: str) -> str:
        return text


    def not_async(text: str) -> str:
        return text


    class NotAnAgent:
        async def __call__(self, text: str) -> str:
            return text


    @murmur.register
    async def also_here(text: str) -> str:
        return text
"""

HELPERS = """
    import murmur


    async def imported_helper(text: str) -> str:
        return text


    @murmur.register
    async def registered_elsewhere(text: str) -> str:
        return text.upper()
"""


def test_an_app_serves_its_module_level_agents_and_what_it_registered(app_dir: Path) -> None:
    registry = AgentRegistry.from_module(write_app(app_dir, APP, helpers=HELPERS))
    assert registry.names() == [
        "also_here",
        "plain",
        "registered_elsewhere",
        "researcher",
        "reviewer",
        "wrapped",
    ]
    # Imported helpers, private names, sync functions and classes are not agents of the app.
    assert "imported_helper" not in registry
    assert "_private" not in registry
    assert "not_async" not in registry
    assert "NotAnAgent" not in registry


def test_the_caller_and_the_worker_agree_on_names(app_dir: Path) -> None:
    name = write_app(app_dir, APP, helpers=HELPERS)
    registry = AgentRegistry.from_module(name)
    module = sys.modules[name]
    for agent in (module.researcher, module.plain, module.wrapped, module.reviewer):
        impl = murmur._agents.resolve_agent(agent)
        assert registry.get(impl.name) is not None


def test_two_agents_with_one_name_are_an_error_naming_both(app_dir: Path) -> None:
    name = write_app(
        app_dir,
        """
        import murmur
        from pydantic_ai.models.test import TestModel

        first = murmur.Agent(name="twin", model=TestModel())
        second = murmur.Agent(name="twin", model=TestModel())
        """,
    )
    with pytest.raises(DuplicateAgentError, match=r"'twin'.*\.first.*\.second"):
        AgentRegistry.from_module(name)


def test_the_same_agent_under_two_variables_is_one_agent(app_dir: Path) -> None:
    name = write_app(
        app_dir,
        """
        async def answer(text: str) -> str:
            return text

        alias = answer
        """,
    )
    assert AgentRegistry.from_module(name).names() == ["answer"]


def test_select_serves_only_the_named_agents_and_lists_the_others_on_a_typo(
    app_dir: Path,
) -> None:
    registry = AgentRegistry.from_module(write_app(app_dir, APP, helpers=HELPERS))
    assert registry.select(["reviewer", "researcher"]).names() == ["researcher", "reviewer"]
    with pytest.raises(InvalidValueError, match=r"'reviwer'.*defines: 'also_here', 'plain'"):
        registry.select(["reviwer"])


def test_a_module_that_cannot_be_imported_is_a_clear_error() -> None:
    with pytest.raises(InvalidValueError, match=r"cannot import the app module 'no_such_app_x'"):
        AgentRegistry.from_module("no_such_app_x")


def test_register_refuses_what_is_not_an_agent() -> None:
    with pytest.raises(InvalidTypeError, match="agent must be"):
        murmur.register(42)


@pytest.mark.anyio
async def test_an_executor_serves_only_the_registry(app_dir: Path) -> None:
    registry = AgentRegistry.from_module(write_app(app_dir, APP, helpers=HELPERS))
    executor = Executor(agents=registry.select(["reviewer"]).as_mapping())

    class Sink:
        async def emit(self, event: Any) -> None:
            pass

    def envelope(agent: str) -> TaskEnvelope:
        return TaskEnvelope(agent=agent, task=TaskSpec(input="ok"), trace_id="t")

    served = await executor.execute(envelope("reviewer"), Sink())
    refused = await executor.execute(envelope("registered_elsewhere"), Sink())
    assert served.output == "ok!"
    assert isinstance(refused.error, murmur.UnknownAgentError)
