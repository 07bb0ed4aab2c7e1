"""An app for the fault tests: an agent that records every run it makes."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel


class Job(BaseModel):
    """One task: its number, and the file each run of it is recorded in."""

    n: int
    runs: str


async def record(job: Job) -> int:
    """Appends ``n`` to the runs file (one line per run, in any process), returns ``n``."""
    with Path(job.runs).open("a") as log:
        log.write(f"{job.n} {os.getpid()}\n")
    return job.n
