"""The ``murmur demo`` command: its options and help, without the demo's imports.

The demo itself (a pydantic-ai model, rich progress bars) is in ``_demo`` and imported only
when the command runs, so ``murmur --help`` never pays for it; ``--broker`` runs it through
local worker processes (``_demo_broker``).
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
        "usage, and a few deliberate failures. No API key, no network and, unless you "
        "ask for one, no broker.",
        "The calls go through AgentRuntime.gather with a hard concurrency cap; a custom "
        "pipeline stage drives the progress display, and failed calls come back as data.",
        "[bold]Through a broker[/bold]\n"
        "With --broker URL (Redis, NATS or RabbitMQ) the same calls go through the broker "
        "to local worker processes (murmur worker start) that the demo starts, in a "
        "namespace of its own, and stops when it is done (or interrupted), deleting what "
        "the namespace left on the broker. The summary also counts the tasks each worker "
        "ran.",
        "[bold]Examples[/bold]\n"
        "  murmur demo\n"
        "  murmur demo --tasks 1000 --concurrency 50 --backend trio\n"
        "  murmur demo --broker redis://localhost:6379 --workers 2\n"
        "  murmur demo --broker amqp://guest:guest@localhost:5672/",
    )
)

#: The brokers ``murmur demo --broker`` can run on: its workers are separate processes, so
#: ``memory://`` (one process) cannot; Kafka is left out as it is not tested against a
#: real server.
DEMO_BROKERS = ("redis", "nats", "rabbit")


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
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            metavar="URL",
            help=(
                "Run the calls through this broker (redis://, nats:// or amqp://) on local "
                "worker processes the demo starts and stops. Default: in this process."
            ),
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            "-w",
            min=1,
            max=16,
            help="With --broker: how many local worker processes to start.",
        ),
    ] = 1,
) -> None:
    """``murmur demo``: see ``DEMO_HELP``."""
    if backend is Backend.trio and importlib.util.find_spec("trio") is None:
        raise typer.BadParameter(
            "Trio is not installed; install it with: pip install 'murmur-agents[trio]'",
            param_hint="'--backend'",
        )
    if broker is not None:
        _check_broker(broker)
    from ._demo import DemoConfig, run_in_terminal

    run_in_terminal(
        DemoConfig(
            tasks=tasks,
            concurrency=concurrency,
            backend=backend,
            seed=seed,
            fail_every=fail_every,
            broker=broker,
            workers=workers,
        )
    )


def _check_broker(broker: str) -> None:
    """A usage error unless the demo can run on ``broker`` (and its extra is installed)."""
    from ..distributed._adapter import load_adapter
    from ..distributed._url import parse_broker_url
    from ..errors import InvalidValueError, MissingDependencyError

    try:
        url = parse_broker_url(broker)
    except InvalidValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--broker'") from None
    if url.kind not in DEMO_BROKERS:
        why = {
            "memory": "memory:// lives in one process, and the demo's workers are processes "
            "of their own",
            "kafka": "the demo does not support Kafka (it is not tested against a real Kafka "
            "server)",
        }[url.kind]
        raise typer.BadParameter(
            f"{why}; use redis://, nats:// or amqp:// (RabbitMQ), got {url.redacted}",
            param_hint="'--broker'",
        )
    try:
        load_adapter(url)
    except MissingDependencyError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--broker'") from None
