"""A small app module for workers started in tests (``--app tests.distributed.app``).

Its agents are what the tests need and nothing more: other tests add theirs here.
"""

from __future__ import annotations

from pathlib import Path

import anyio


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
