"""The ``murmur worker`` commands: their options and help, without the worker's imports.

``murmur worker start`` serves an app's agents from a broker. What it runs (the app
import, the broker client, the log formats and the live status line) is in ``_serve`` and
imported only when the command runs, so ``murmur --help`` never pays for it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

__all__ = ["LogFormat", "start", "worker_app"]


class LogFormat(StrEnum):
    """How ``murmur worker start`` reports on stderr."""

    auto = "auto"
    console = "console"
    json = "json"


WORKER_HELP = (
    "Run workers that serve an app's agents from a broker (distributed mode).\n\n"
    "Callers send tasks with AgentRuntime(broker=URL); a worker started with the same "
    "broker URL and namespace runs them and sends the results back."
)

START_HELP = "\n\n".join(
    (
        "Serve the agents an app module defines, taking their tasks from a broker.",
        "The app module is imported once, with the current directory on sys.path (as "
        "python -m does); its agents are what it defines at module level (murmur.Agent, "
        "pydantic-ai agents, its own async def functions) plus what it declares with "
        "murmur.register. A task can only run an agent this worker serves: nothing named "
        "in a message is ever imported.",
        "[bold]Examples[/bold]\n"
        "  murmur worker start --app myproject.agents --broker redis://localhost:6379\n"
        "  MURMUR_APP=myproject.agents murmur worker start --agents researcher \\\n"
        "      --broker kafka://kafka.prod:9092 --concurrency 20\n"
        "  murmur worker start --app myproject.agents --broker nats://localhost:4222 \\\n"
        "      --log-format json",
        "[bold]Concurrency and shutdown[/bold]\n"
        "--concurrency caps the tasks this worker runs at once (and how many it takes from "
        "the broker ahead of running them); run more workers for more throughput. "
        "SIGTERM or Ctrl-C (SIGINT) drains the worker: it takes no new tasks, lets those "
        "in flight finish for up to --grace seconds (then cancels them: unacknowledged, "
        "they are delivered again to another worker) and exits 0. A second signal stops "
        "it at once, cancelling what is in flight the same way, and exits 128 + the "
        "signal's number (130 for Ctrl-C, 143 for SIGTERM).",
        "[bold]Rate limits[/bold]\n"
        "--rate-limit states a provider's published limits once for the calls this worker "
        "runs: a task waits on the worker (in one of its --concurrency slots) until every "
        "limit that applies admits it, and a 429 pauses its model for every task here. "
        "With store=redis://... the limit is shared by every worker and caller using the "
        "same store and name, so a fleet stays within it together.\n"
        "  murmur worker start --app myproject.agents --broker redis://localhost:6379 \\\n"
        "      --rate-limit 'model=openai:gpt-4o,rpm=500,tpm=200000,"
        "store=redis://localhost:6379/0' \\\n"
        "      --rate-limit 'provider=anthropic,rpm=50'",
        "[bold]Dead letters[/bold]\n"
        "A message the worker cannot read, of another wire version, for an agent it does "
        "not serve, or delivered more than --max-deliveries times is set aside as a dead "
        "letter (with the reason and its bytes; its caller gets a DeadLetteredError), never "
        "dropped: see murmur dlq list / murmur dlq replay.",
        "[bold]Logs[/bold] (on stderr)\n"
        "json: one JSON object per line: worker.started (once it is taking tasks), "
        "worker.heartbeat (every --heartbeat seconds), worker.stop_requested, "
        "worker.stopped; each with event, worker, timestamp and its counts (and, with "
        "--rate-limit, rate_limits: each limit's rate factor, waiting tasks and pause). "
        "console: the same as plain lines. auto: on a terminal, a live status line "
        "(processed, failed, in flight, tasks/s, per agent, rate limits) and the start and "
        "stop lines; "
        "otherwise console.",
        "[bold]Exit codes[/bold]: 0 stopped; 1 the broker cannot be reached or the worker "
        "failed; 2 a usage error (no app, an app that does not import, an unknown agent, "
        "a bad broker URL or --rate-limit, a missing extra); 130 / 143 stopped at once by "
        "a second signal.",
    )
)


worker_app = typer.Typer(
    name="worker",
    help=WORKER_HELP,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@worker_app.callback(invoke_without_command=True)
def _worker(ctx: typer.Context) -> None:
    """``murmur worker`` alone prints its help and succeeds."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


@worker_app.command(
    "start",
    help=START_HELP,
    short_help="Serve an app's agents from a broker until stopped.",
)
def start(
    app: Annotated[
        str | None,
        typer.Option(
            "--app",
            metavar="MODULE",
            envvar="MURMUR_APP",
            help="The app module whose agents to serve, as for import (myproject.agents).",
        ),
    ] = None,
    agents: Annotated[
        list[str] | None,
        typer.Option(
            "--agents",
            metavar="NAME[,NAME...]",
            help=(
                "Serve only these agents (comma-separated, or the option repeated). "
                "Default: every agent the app defines."
            ),
        ),
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            metavar="URL",
            envvar="MURMUR_BROKER",
            help=(
                "The broker callers send tasks to: redis://, rediss://, nats://, amqp://, "
                "amqps://, kafka://. Required."
            ),
        ),
    ] = None,
    concurrency: Annotated[
        int,
        typer.Option(
            "--concurrency",
            "-c",
            min=1,
            help="Tasks this worker runs at once, at most.",
        ),
    ] = 20,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            min=0,
            metavar="SECONDS",
            help=(
                "On SIGTERM / Ctrl-C, how long tasks in flight may take to finish before "
                "they are cancelled (and left on the broker to be delivered again)."
            ),
        ),
    ] = 30.0,
    redeliver_after: Annotated[
        float,
        typer.Option(
            "--redeliver-after",
            min=0.001,
            metavar="SECONDS",
            help=(
                "How long a task taken by a worker that died (or lost the broker) waits "
                "before another worker gets it (Redis, NATS; RabbitMQ requeues when the "
                "connection drops). A live worker keeps its tasks however long they run. "
                "Also about how often the worker dead-letters the tasks past their deadline "
                "of agents no worker serves."
            ),
        ),
    ] = 30.0,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            metavar="NS",
            envvar="MURMUR_NAMESPACE",
            help=(
                "Prefix of the broker's streams, subjects or queues; callers and workers of "
                "one app must agree. Default: murmur."
            ),
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="This worker's name in logs and events. Default: host-pid-random.",
        ),
    ] = None,
    heartbeat: Annotated[
        float,
        typer.Option(
            "--heartbeat",
            min=0,
            metavar="SECONDS",
            help="Interval of worker.heartbeat log lines; 0 turns them off.",
        ),
    ] = 10.0,
    max_deliveries: Annotated[
        int,
        typer.Option(
            "--max-deliveries",
            min=1,
            metavar="N",
            help=(
                "A task delivered more often than this (its workers kept dying or stopping "
                "on it) is not run again: it goes to the dead letters (murmur dlq) and its "
                "caller gets a DeadLetteredError."
            ),
        ),
    ] = 5,
    rate_limits: Annotated[
        list[str] | None,
        typer.Option(
            "--rate-limit",
            metavar="SPEC",
            envvar="MURMUR_RATE_LIMITS",
            show_envvar=True,
            help=(
                "A provider's limit on the calls this worker runs, as key=value pairs: "
                "model=, provider= or agent= (which calls), rpm= and/or tpm= (requests and "
                "tokens per minute), and optionally burst=, period= (seconds), "
                "store=redis://... (shared by every worker and caller with that store), "
                "on_store_error=closed|open, store_timeout= (seconds), name=. Repeat it for "
                "several limits; in MURMUR_RATE_LIMITS, separate them with ';' (or "
                "newlines, or spaces: spaces after a comma belong to the SPEC)."
            ),
        ),
    ] = None,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            case_sensitive=False,
            help="auto (a live status line on a terminal, else console), console or json.",
        ),
    ] = LogFormat.auto,
) -> None:
    """``murmur worker start``: see ``START_HELP``."""
    from ._serve import StartOptions, run_worker

    if rate_limits:
        import os

        from ._rate_limits import ENVVAR, split_specs

        variable = os.environ.get(ENVVAR)
        if variable is not None and rate_limits == variable.split():
            # From the variable, which Click split on whitespace: split it as documented.
            rate_limits = split_specs(variable)

    code = run_worker(
        StartOptions(
            app=app,
            agents=agents or [],
            broker=broker,
            concurrency=concurrency,
            grace=grace,
            redeliver_after=redeliver_after,
            namespace=namespace,
            name=name,
            heartbeat=heartbeat,
            log_format=log_format.value,
            max_deliveries=max_deliveries,
            rate_limits=rate_limits or [],
        )
    )
    raise typer.Exit(code)
