"""The ``murmur`` command line: ``murmur demo``, ``murmur worker start``, ``murmur dlq list``
and ``murmur dlq replay``, ``murmur version``, ``murmur --version``.

``app`` is the Typer application and ``main`` the console-script entry point
(``murmur = "murmur.cli:main"``). Each command lives in its own module and is registered
here; command groups (``murmur worker ...``, for distributed workers) are sub-apps added
with ``app.add_typer``. A command imports what it needs when it runs, so ``murmur --help``
stays fast.
"""

from __future__ import annotations

import platform
from typing import Annotated

import typer

from .._version import __version__
from ._demo_command import DEMO_HELP, demo
from ._dlq_command import DLQ_HELP, dlq_app
from ._worker_command import WORKER_HELP, worker_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="murmur",
    help=(
        "Murmur: structured concurrency for fleets of LLM agent calls, on asyncio or Trio.\n\n"
        "Try [bold]murmur demo[/bold]: an offline fan-out of a few hundred agent calls, "
        "no API key needed."
    ),
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_line() -> str:
    return (
        f"murmur {__version__} (Python {platform.python_version()}, "
        f"{platform.python_implementation()})"
    )


def _print_version(value: bool) -> None:
    if value:
        typer.echo(_version_line())
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _murmur(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            is_eager=True,
            callback=_print_version,
            help="Print Murmur's version (and Python's) and exit.",
        ),
    ] = False,
) -> None:
    """``murmur`` alone prints its help and succeeds (it is not a usage error)."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())  # what --help does


app.command(
    "demo",
    help=DEMO_HELP,
    short_help="Fan out agent calls over an offline model, with live progress.",
)(demo)


app.add_typer(
    worker_app,
    name="worker",
    help=WORKER_HELP,
    short_help="Run workers that serve an app's agents from a broker.",
)


app.add_typer(
    dlq_app,
    name="dlq",
    help=DLQ_HELP,
    short_help="Inspect and replay dead letters (messages workers set aside).",
)


@app.command("version")
def version() -> None:
    """Print Murmur's version (and Python's)."""
    typer.echo(_version_line())


def main() -> None:
    """Console-script entry point."""
    app()
