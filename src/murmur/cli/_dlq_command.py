"""The ``murmur dlq`` commands: their options and help, without the broker imports.

``murmur dlq list`` shows a namespace's dead letters (task messages workers set aside
instead of running) and ``murmur dlq replay`` queues them again for their agents. What
they run is in ``_dlq`` and imported only when a command runs.
"""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["DLQ_HELP", "dlq_app"]

DLQ_HELP = (
    "Inspect and replay dead letters: task messages workers set aside instead of running "
    "(unreadable, of another wire version, for an agent they do not serve, delivered "
    "more than --max-deliveries times, or past its deadline for an agent no worker "
    "serves)."
)

LIST_HELP = "\n\n".join(
    (
        "List the newest dead letters of a namespace, newest first: id, when, agent, "
        "reason, the worker that set it aside, its deliveries and its size.",
        "[bold]Examples[/bold]\n"
        "  murmur dlq list --broker redis://localhost:6379\n"
        "  murmur dlq list --broker nats://localhost:4222 --namespace myapp --json",
        "--json prints one JSON array: each dead letter with its detail and its message, "
        "base64-encoded (data).",
        "[bold]Exit codes[/bold]: 0 listed; 1 the broker cannot be reached; 2 a usage error.",
    )
)

REPLAY_HELP = "\n\n".join(
    (
        "Queue dead letters again on their agent's task channel, oldest first, and remove "
        "them from the dead letters. A worker serving the agent then runs them (a message "
        "that cannot be read is set aside again). A task whose deadline has passed is given "
        "a new one, --timeout seconds from the replay, so that it runs (its caller, if it "
        "stopped waiting, drops the result).",
        "[bold]Examples[/bold]\n"
        "  murmur dlq replay --broker redis://localhost:6379 --id 1718000000000-0\n"
        "  murmur dlq replay --broker amqp://guest:guest@localhost:5672/ --all",
        "[bold]Exit codes[/bold]: 0 replayed; 1 the broker cannot be reached, or an --id "
        "is not a dead letter (the others are replayed); 2 a usage error.",
    )
)

dlq_app = typer.Typer(
    name="dlq",
    help=DLQ_HELP,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

Broker = Annotated[
    str | None,
    typer.Option(
        "--broker",
        metavar="URL",
        envvar="MURMUR_BROKER",
        help="The broker the workers use: redis://, rediss://, nats://, amqp://, amqps://, "
        "kafka://. Required.",
    ),
]
Namespace = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        metavar="NS",
        envvar="MURMUR_NAMESPACE",
        help="The workers' namespace. Default: murmur.",
    ),
]


@dlq_app.callback(invoke_without_command=True)
def _dlq(ctx: typer.Context) -> None:
    """``murmur dlq`` alone prints its help and succeeds."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


@dlq_app.command("list", help=LIST_HELP, short_help="List the newest dead letters.")
def list_(
    broker: Broker = None,
    namespace: Namespace = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, help="How many to show, newest first.")
    ] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    from ._dlq import list_dead_letters

    raise typer.Exit(list_dead_letters(broker, namespace, limit=limit, as_json=as_json))


@dlq_app.command(
    "replay", help=REPLAY_HELP, short_help="Queue dead letters again for their agents."
)
def replay(
    broker: Broker = None,
    namespace: Namespace = None,
    ids: Annotated[
        list[str] | None,
        typer.Option("--id", metavar="ID", help="A dead letter to replay (repeatable)."),
    ] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            metavar="SECONDS",
            min=0.0,
            help="The new deadline of a replayed task whose deadline has passed, in seconds "
            "from the replay. Default: 300.",
        ),
    ] = None,
) -> None:
    from ._dlq import replay_dead_letters

    raise typer.Exit(
        replay_dead_letters(
            broker, namespace, ids=ids or [], replay_all=replay_all, timeout=timeout
        )
    )
