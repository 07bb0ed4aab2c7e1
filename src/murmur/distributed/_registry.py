"""The agents a worker serves, by name: a message can run these and nothing else.

A worker imports its app module once and serves what it defines at module level
(``murmur.Agent``s, pydantic-ai agents, ``from_pydantic_ai(...)`` agents, ``async def``
functions defined in that module) plus what the import declared with ``murmur.register``.
Names are what callers address: the same agent object on the caller resolves to the same
name. Nothing named in a message is ever imported or looked up anywhere else.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any

from .. import _agents
from .._agents import AgentImpl, resolve_agent
from .._lazy import loaded_class
from ..errors import InvalidValueError

__all__ = ["AgentRegistry", "DuplicateAgentError"]


class DuplicateAgentError(InvalidValueError):
    """Two different agents of one app have the same name; the message names both."""


class AgentRegistry:
    """Agents by name, each resolved once (``AgentImpl``), with where each came from."""

    def __init__(self) -> None:
        self._agents: dict[str, AgentImpl] = {}
        self._origins: dict[str, str] = {}
        self._objects: dict[str, Any] = {}

    def add(self, agent: Any, *, origin: str = "") -> AgentImpl:
        """Serve ``agent`` under its name; the same object twice is one agent.

        Raises:
            InvalidTypeError: ``agent`` is not an agent.
            DuplicateAgentError: another agent already has that name.
        """
        impl = resolve_agent(agent)
        name = impl.name
        known = self._objects.get(name)
        if known is not None:
            if known is agent or self._agents[name] is impl:
                return self._agents[name]
            raise DuplicateAgentError(
                f"two agents are named {name!r}: {self._origins[name] or repr(known)} and "
                f"{origin or repr(agent)}; give one of them another name"
            )
        self._agents[name] = impl
        self._origins[name] = origin
        self._objects[name] = agent
        return impl

    def get(self, name: str) -> AgentImpl | None:
        """The agent served under ``name``, if any."""
        return self._agents.get(name)

    def names(self) -> list[str]:
        """The names served, sorted."""
        return sorted(self._agents)

    def as_mapping(self) -> dict[str, AgentImpl]:
        """Name to agent, for an ``Executor``."""
        return dict(self._agents)

    def select(self, names: Iterable[str]) -> AgentRegistry:
        """A registry of only ``names`` (``--agents``).

        Raises:
            InvalidValueError: a name this registry does not serve; the message lists those
                it does.
        """
        wanted = list(names)
        unknown = [name for name in wanted if name not in self._agents]
        if unknown:
            raise InvalidValueError(
                f"no agent named {', '.join(map(repr, unknown))}; the app defines: "
                f"{', '.join(map(repr, self.names())) or 'none'}"
            )
        chosen = AgentRegistry()
        for name in wanted:
            chosen.add(self._objects[name], origin=self._origins[name])
        return chosen

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._agents)

    @classmethod
    def from_module(cls, module: str | ModuleType) -> AgentRegistry:
        """The agents an app module defines at module level, plus those its import
        declared with ``murmur.register``.

        Raises:
            InvalidValueError: the module cannot be imported (the message says why).
            DuplicateAgentError: two of its agents have the same name.
        """
        before = len(_agents.registered)
        if isinstance(module, str):
            try:
                module = importlib.import_module(module)
            except Exception as exc:
                raise InvalidValueError(
                    f"cannot import the app module {module!r}: {type(exc).__name__}: {exc}"
                ) from exc
        registry = cls()
        where = module.__name__
        for attribute, value in vars(module).items():
            if attribute.startswith("_") or not _defines_agent(value, where):
                continue
            registry.add(value, origin=f"{where}.{attribute}")
        # Declared by this module (also when it was imported earlier), or by anything its
        # import imported.
        for index, (agent, declared_in) in enumerate(_agents.registered):
            if index >= before or declared_in == where:
                registry.add(agent, origin=f"murmur.register() in {declared_in}")
        return registry

    def __repr__(self) -> str:
        return f"AgentRegistry({self.names()!r})"


def _defines_agent(value: Any, module: str) -> bool:
    """Whether a module-level ``value`` of ``module`` is an agent it defines."""
    if isinstance(value, type) or inspect.ismodule(value):
        return False
    if inspect.isfunction(value):
        # Its own `async def`s, not functions it imported from elsewhere.
        return value.__module__ == module and inspect.iscoroutinefunction(value)
    if hasattr(value, "__murmur_agent__"):  # murmur.Agent, from_pydantic_ai(...)
        return True
    agent_class = loaded_class("pydantic_ai.agent", "Agent")
    return agent_class is not None and isinstance(value, agent_class)
