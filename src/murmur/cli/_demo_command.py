"""The ``murmur demo`` command: its options and help, without the demo's imports.

The demo itself (a pydantic-ai model, rich progress bars) is in ``_demo`` and imported only
when the command runs, so ``murmur --help`` never pays for it.
"""

from __future__ import annotations

import importlib.util
from enum import StrEnum
from typing import Annotated

import typer

__all__ = ["DEMO_HELP", "Backend", "demo"]


class Backend(StrEnum):
    """The event loops ``murmur demo`` can run on."""

    asyncio = "asyncio"
    trio = "trio"


DEMO_HELP = "\n\n".join(
    (
        "Fan out agent calls over an offline model, with live progress and a summary.",
        "A murmur.Agent triages synthetic support tickets on a pydantic-ai FunctionModel "
        "that stands in for an LLM: seeded latencies, deterministic answers, plausible token "
        "usage, and a few deliberate failures. No API key, no network, no broker.",
        "The calls go through AgentRuntime.gather with a hard concurrency cap; a custom "
        "pipeline stage drives the progress display, and failed calls come back as data.",
    )
)


def demo(
    tasks: Annotated[
        int,
        typer.Option("--tasks", "-n", min=1, help="How many agent calls to fan out."),
    ] = 200,
    concurrency: Annotated[
        int,
        typer.Option(
            "--concurrency",
            "-c",
            min=1,
            help="Hard cap on calls in flight (gather's max_concurrency).",
        ),
    ] = 20,
    backend: Annotated[
        Backend,
        typer.Option("--backend", "-b", case_sensitive=False, help="Event loop to run on."),
    ] = Backend.asyncio,
    seed: Annotated[
        int,
        typer.Option("--seed", help="Seed for the tickets, latencies and token counts."),
    ] = 0,
    fail_every: Annotated[
        int,
        typer.Option(
            "--fail-every",
            min=0,
            help=(
                "Make every Nth call fail (rate limit, overload or malformed output); "
                "0 disables failures."
            ),
        ),
    ] = 20,
) -> None:
    """``murmur demo``: see ``DEMO_HELP``."""
    if backend is Backend.trio and importlib.util.find_spec("trio") is None:
        raise typer.BadParameter(
            "Trio is not installed; install it with: pip install 'murmur-agents[trio]'",
            param_hint="'--backend'",
        )
    from ._demo import DemoConfig, run_in_terminal

    run_in_terminal(
        DemoConfig(
            tasks=tasks, concurrency=concurrency, backend=backend, seed=seed, fail_every=fail_every
        )
    )
