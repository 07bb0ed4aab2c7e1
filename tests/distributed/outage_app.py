"""The app module of the broker-outage and drain tests (``--app distributed.outage_app``)."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
from pydantic import BaseModel


class Gated(BaseModel):
    """One task of a batch held at a gate: it finishes once the file ``gate`` exists."""

    gate: str
    label: str
    #: A directory where each run of the task leaves a file (to count executions).
    runs: str


async def gated(item: Gated) -> str:
    """Records its run, waits for its gate, returns ``label@pid`` (who ran it)."""
    runs = Path(item.runs)
    (runs / f"{item.label}.{os.getpid()}.{os.urandom(4).hex()}").touch()
    gate = Path(item.gate)
    while not gate.exists():
        await anyio.sleep(0.01)
    return f"{item.label}@{os.getpid()}"
