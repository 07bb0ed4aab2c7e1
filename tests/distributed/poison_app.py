"""An app whose agent takes its worker process down with it: a poison input."""

from __future__ import annotations

import os
from pathlib import Path


async def crash(runs: str) -> str:
    """Records its run in the file ``runs`` names, then ends its worker process at once
    (as a segfaulting extension or ``os._exit`` in a dependency would)."""
    with Path(runs).open("a") as log:
        log.write(f"{os.getpid()}\n")
    os._exit(1)
