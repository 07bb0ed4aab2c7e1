"""The public surface: every exported name exists, and the error tree is rooted at MurmurError."""

from __future__ import annotations

import inspect

import anyio
import pytest

import murmur
import murmur.errors
from murmur import (
    AgentError,
    AgentTimeoutError,
    BudgetExceededError,
    InputValidationError,
    MurmurError,
    RemoteAgentError,
    RuntimeClosedError,
    SpawnDepthExceededError,
    TaskCancelledError,
    TopologyError,
)


@pytest.mark.parametrize("name", murmur.__all__)
def test_every_exported_name_exists(name: str) -> None:
    assert hasattr(murmur, name), f"murmur.__all__ lists {name!r} but murmur has no such name"
    assert getattr(murmur, name) is not None


def test_all_has_no_duplicates_and_star_import_works() -> None:
    assert len(murmur.__all__) == len(set(murmur.__all__))
    namespace: dict[str, object] = {}
    exec("from murmur import *", namespace)
    assert set(murmur.__all__) <= set(namespace)


def test_core_names_are_exported() -> None:
    for name in (
        "Agent",
        "AgentContext",
        "AgentResult",
        "AgentRuntime",
        "RuntimeOptions",
        "TaskSpec",
        "Usage",
        "from_pydantic_ai",
        "current_context",
        "__version__",
    ):
        assert name in murmur.__all__


def test_version_is_a_string() -> None:
    assert isinstance(murmur.__version__, str)
    assert murmur.__version__


def error_classes() -> list[type[BaseException]]:
    """Every exception class that murmur or murmur.errors exports."""
    found: dict[str, type[BaseException]] = {}
    for module in (murmur, murmur.errors):
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isclass(value) and issubclass(value, BaseException):
                found[name] = value
    return list(found.values())


@pytest.mark.parametrize("error", error_classes(), ids=lambda cls: cls.__name__)
def test_every_exported_error_is_a_murmur_error(error: type[BaseException]) -> None:
    assert issubclass(error, MurmurError)
    assert issubclass(error, Exception)
    assert getattr(murmur, error.__name__) is error


def test_every_error_in_murmur_errors_is_exported_from_murmur() -> None:
    for name in murmur.errors.__all__:
        assert name in murmur.__all__
        assert getattr(murmur, name) is getattr(murmur.errors, name)


def test_the_documented_error_tree() -> None:
    assert MurmurError.__bases__ == (Exception,)
    for cls in (
        InputValidationError,
        TaskCancelledError,
        AgentTimeoutError,
        BudgetExceededError,
        SpawnDepthExceededError,
        RemoteAgentError,
    ):
        assert issubclass(cls, AgentError)
    assert issubclass(AgentError, MurmurError)
    assert not issubclass(RuntimeClosedError, AgentError)
    assert not issubclass(TopologyError, AgentError)
    # The stdlib bases users may already catch.
    assert issubclass(InputValidationError, ValueError)
    assert issubclass(AgentTimeoutError, TimeoutError)
    assert issubclass(RuntimeClosedError, RuntimeError)
    assert issubclass(TopologyError, ValueError)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_cancellation_is_not_part_of_the_error_tree(backend: str) -> None:
    """The backends' cancellation exceptions are never MurmurErrors (nor plain Exceptions)."""

    async def get() -> type[BaseException]:
        return anyio.get_cancelled_exc_class()

    cancelled = anyio.run(get, backend=backend)
    assert not issubclass(cancelled, Exception)
    assert not issubclass(cancelled, MurmurError)
    assert not issubclass(TaskCancelledError, cancelled)


def test_error_constructors() -> None:
    error = InputValidationError("agent-x", [{"loc": ("a", 0), "msg": "bad"}])
    assert error.agent == "agent-x"
    assert error.errors == [{"loc": ("a", 0), "msg": "bad"}]
    assert "agent-x" in str(error)
    assert "a.0: bad" in str(error)
    many = InputValidationError("y", [{"loc": (str(i),), "msg": "m"} for i in range(5)])
    assert "(+2 more)" in str(many)
    remote = RemoteAgentError("pkg.Error", "boom", "Traceback ...")
    assert (remote.type_name, remote.message, remote.remote_traceback) == (
        "pkg.Error",
        "boom",
        "Traceback ...",
    )
    assert str(remote) == "pkg.Error: boom"


def test_murmur_raises_no_bare_builtin_exception() -> None:
    """Every ``raise`` of Murmur's own is a MurmurError (with the builtin as a second base).

    Allowed: Python's protocol errors (``AttributeError`` from ``__setattr__``, ``KeyError``
    from ``__getitem__``) and the demo's simulated model, which plays user code.
    """
    import ast
    import builtins
    from pathlib import Path

    root = Path(murmur.__file__).parent
    builtin_errors = {
        name
        for name, value in vars(builtins).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    allowed = {
        ("__setattr__", "AttributeError"),
        ("__getattr__", "AttributeError"),  # the module attribute protocol
        ("__getitem__", "KeyError"),
    }
    offenders: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "_demo.py":
            continue
        tree = ast.parse(path.read_text())
        functions = [
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        for func in functions:
            for node in ast.walk(func):
                if not isinstance(node, ast.Raise) or not isinstance(node.exc, ast.Call):
                    continue
                called = node.exc.func
                name = called.id if isinstance(called, ast.Name) else None
                if name in builtin_errors and (func.name, name) not in allowed:
                    offenders.append(f"{path.relative_to(root)}:{node.lineno} {name}")
    assert offenders == []


async def shout(text: str) -> str:
    return text.upper()


def test_the_builtin_bases_of_murmurs_own_misuse_errors() -> None:
    assert issubclass(murmur.InvalidValueError, ValueError)
    assert issubclass(murmur.InvalidTypeError, TypeError)
    assert issubclass(murmur.InvalidStateError, RuntimeError)
    assert issubclass(murmur.NoTaskContextError, LookupError)
    assert issubclass(murmur.MissingDependencyError, ModuleNotFoundError)
    assert issubclass(murmur.NotAvailableError, NotImplementedError)
    assert issubclass(RuntimeClosedError, murmur.InvalidStateError)
    assert issubclass(TopologyError, murmur.InvalidValueError)
    with pytest.raises(murmur.InvalidValueError, match="max_concurrency"):
        murmur.AgentRuntime().gather_sync(shout, [], max_concurrency=0)
    with pytest.raises(murmur.NoTaskContextError):
        murmur.current_context()
