"""The ``murmur`` command line: ``murmur demo``, ``murmur version``.

``app`` is the Typer application and ``main`` the console-script entry point
(``murmur = "murmur.cli:main"``). Each command lives in its own module and is registered
here; command groups (``murmur worker ...``, for distributed workers) will be added the
same way, as sub-apps with ``app.add_typer(worker_app, name="worker")``.
"""

from __future__ import annotations

import platform

import typer

from .._version import __version__
from ._demo import DEMO_HELP, demo

__all__ = ["app", "main"]

app = typer.Typer(
    name="murmur",
    help=(
        "Murmur: structured concurrency for fleets of LLM agent calls, on asyncio or Trio.\n\n"
        "Try [bold]murmur demo[/bold]: an offline fan-out of a few hundred agent calls, "
        "no API key needed."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command(
    "demo",
    help=DEMO_HELP,
    short_help="Fan out agent calls over an offline model, with live progress.",
)(demo)


@app.command("version")
def version() -> None:
    """Print Murmur's version (and Python's)."""
    typer.echo(
        f"murmur {__version__} (Python {platform.python_version()}, "
        f"{platform.python_implementation()})"
    )


def main() -> None:
    """Console-script entry point."""
    app()
