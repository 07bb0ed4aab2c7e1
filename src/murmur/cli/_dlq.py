"""What ``murmur dlq list`` and ``murmur dlq replay`` run: one adapter, one call, closed.

Errors are one line on stderr (``error: ...``), as ``murmur worker start`` writes them:
exit code 2 for usage problems, 1 when the broker cannot be reached (or an id is not a
dead letter). Output goes to stdout: a table (rich, coloured on a terminal) or JSON.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio

from ..distributed._adapter import (
    DEFAULT_REPLAY_DEADLINE,
    BrokerAdapter,
    DeadLetter,
    load_adapter,
)
from ..distributed._transport import DEFAULT_CONNECT_TIMEOUT, namespace_from_env, scrub
from ..distributed._url import parse_broker_url
from ..errors import InvalidValueError, MissingDependencyError
from ._serve import FAILED, USAGE, _error

__all__ = ["list_dead_letters", "replay_dead_letters"]

T = TypeVar("T")


def list_dead_letters(
    broker: str | None, namespace: str | None, *, limit: int, as_json: bool
) -> int:
    """``murmur dlq list``; the exit code."""

    async def newest(adapter: BrokerAdapter) -> list[DeadLetter]:
        return await adapter.dead_letters(limit)

    letters = _run(broker, namespace, newest)
    if isinstance(letters, int):
        return letters
    messages = _one_row_per_message(letters)
    if as_json:
        rows = [_as_dict(letter, copies) for letter, copies in messages]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        _print_table(messages)
    return 0


def replay_dead_letters(
    broker: str | None,
    namespace: str | None,
    *,
    ids: Sequence[str],
    replay_all: bool,
    timeout: float | None = None,
) -> int:
    """``murmur dlq replay``; the exit code. ``timeout``: seconds from the replay to the
    new deadline of a task whose deadline has passed (default ``DEFAULT_REPLAY_DEADLINE``)."""
    if bool(ids) == replay_all:
        return _error("pass --id ID (repeatable) or --all, not both", USAGE)
    deadline_in = DEFAULT_REPLAY_DEADLINE if timeout is None else timeout

    async def replay(adapter: BrokerAdapter) -> list[DeadLetter]:
        chosen = None if replay_all else list(ids)
        return await adapter.replay_dead_letters(chosen, deadline_in=deadline_in)

    letters = _run(broker, namespace, replay)
    if isinstance(letters, int):
        return letters
    replayed = 0
    for letter, first in DeadLetter.first_copies(letters):
        if first:
            replayed += 1
            sys.stdout.write(f"replayed {letter.id} to agent {letter.agent!r}\n")
        else:
            sys.stdout.write(f"removed {letter.id}: a copy of a message replayed above\n")
    sys.stdout.write(f"{replayed} dead letter{'' if replayed == 1 else 's'} replayed\n")
    missing = [key for key in dict.fromkeys(ids) if key not in {x.id for x in letters}]
    if missing:
        return _error(f"no dead letter with id {', '.join(missing)}", FAILED)
    return 0


def _run(
    broker: str | None,
    namespace: str | None,
    call: Callable[[BrokerAdapter], Awaitable[T]],
) -> T | int:
    """``call`` on a connected adapter for ``broker``; an exit code if that failed."""
    if not broker:
        return _error(
            "no broker: pass --broker URL or set MURMUR_BROKER (e.g. redis://localhost:6379)",
            USAGE,
        )
    try:
        url = parse_broker_url(broker)
        adapter_class = load_adapter(url)
    except (InvalidValueError, MissingDependencyError) as exc:
        return _error(str(exc), USAGE)
    adapter = adapter_class(url, namespace=namespace or namespace_from_env())

    async def main() -> T:
        try:
            with anyio.fail_after(DEFAULT_CONNECT_TIMEOUT):
                await adapter.connect()
            return await call(adapter)
        finally:
            # Closing after a failure: the failure is what matters.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await adapter.aclose()

    try:
        return anyio.run(main)
    except Exception as exc:
        detail = scrub(f"{type(exc).__name__}: {exc}", url)
        return _error(f"broker {url.redacted}: {detail}", FAILED)


def _when(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _one_row_per_message(letters: list[DeadLetter]) -> list[tuple[DeadLetter, list[str]]]:
    """Each message once, as its first (newest) copy in ``letters`` with the ids of its
    other copies (a message stored twice: the worker's acknowledgement after storing it
    failed, and the broker delivered it again)."""
    rows: dict[str, tuple[DeadLetter, list[str]]] = {}
    for letter in letters:
        row = rows.setdefault(letter.fingerprint, (letter, []))
        if row[0] is not letter:
            row[1].append(letter.id)
    return list(rows.values())


def _as_dict(letter: DeadLetter, copies: list[str]) -> dict[str, object]:
    return {
        "id": letter.id,
        "other_copies": copies,
        "timestamp": _when(letter.timestamp),
        "agent": letter.agent,
        "reason": letter.reason,
        "detail": letter.detail,
        "worker": letter.worker,
        "deliveries": letter.deliveries,
        "size": len(letter.data),
        "data": base64.b64encode(letter.data).decode(),
    }


def _print_table(messages: list[tuple[DeadLetter, list[str]]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if not messages:
        console.print("no dead letters")
        return
    letters = [letter for letter, _ in messages]
    table = Table(box=None, header_style="bold")
    # Ids and times are never cut short (an id is what replay takes); the rest wraps.
    table.add_column("id", no_wrap=True, min_width=max(len(x.id) for x in letters))
    table.add_column("when", no_wrap=True, min_width=20)
    table.add_column("agent", overflow="fold")
    table.add_column("reason", no_wrap=True)
    table.add_column("worker", overflow="fold")
    for column in ("deliveries", "size", "copies"):
        table.add_column(column, justify="right", no_wrap=True)
    for letter, copies in messages:
        table.add_row(
            letter.id,
            _when(letter.timestamp),
            letter.agent,
            f"[red]{letter.reason}[/red]",
            letter.worker,
            str(letter.deliveries),
            str(len(letter.data)),
            str(1 + len(copies)),
        )
    console.print(table)
