"""``murmur worker start`` runs its worker on uvloop where uvloop is installed (the broker
extras install it), unless ``MURMUR_WORKER_LOOP=asyncio`` says otherwise."""

from __future__ import annotations

import builtins
from typing import Any

import pytest

from murmur.cli._serve import _loop_options
from murmur.errors import InvalidValueError


def test_the_worker_runs_on_uvloop_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MURMUR_WORKER_LOOP", raising=False)
    assert _loop_options() == {"use_uvloop": True}  # the dev install has uvloop
    monkeypatch.setenv("MURMUR_WORKER_LOOP", "uvloop")
    assert _loop_options() == {"use_uvloop": True}


def test_asyncio_own_loop_when_asked_or_when_uvloop_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MURMUR_WORKER_LOOP", "asyncio")
    assert _loop_options() == {}
    monkeypatch.delenv("MURMUR_WORKER_LOOP")
    real_import = builtins.__import__

    def no_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError("no uvloop here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    assert _loop_options() == {}
    monkeypatch.setenv("MURMUR_WORKER_LOOP", "uvloop")
    with pytest.raises(InvalidValueError, match="uvloop is not installed"):
        _loop_options()


def test_another_loop_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MURMUR_WORKER_LOOP", "tokio")
    with pytest.raises(
        InvalidValueError, match="MURMUR_WORKER_LOOP must be auto, asyncio or uvloop"
    ):
        _loop_options()
