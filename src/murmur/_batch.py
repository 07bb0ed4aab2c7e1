"""A batch: many tasks of one agent through a fixed pool, one result per task, in order.

Shared by ``gather`` and by a group's fanned-out nodes. Nothing is lost: every slot gets
exactly one ``AgentResult`` (a task cut off by ``fail_fast`` gets a ``TaskCancelledError``
result carrying what it had spent), and a ``Tally`` keeps what finished and what was cut
off, for a caller that may itself cancel the batch (a group under ``fail_fast``).

A batch whose attempts run elsewhere (a transport) also has a ``BatchGuard``: cancelled as
a whole, it is revoked as a whole, before any of its tasks sees the cancellation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel

from ._context import Ledger
from ._types import ZERO_USAGE, AgentResult, TaskSpec, Usage
from .errors import TaskCancelledError
from .events.log import log_exception

__all__ = ["BatchGuard", "Tally", "run_pool", "single_exception"]

#: Runs one task of the batch: ``submit(impl, spec, origin)``.
Submit = Callable[[Any, TaskSpec, Any], Awaitable[AgentResult[Any]]]


class Tally:
    """What the tasks of one call spent: finished results, and tasks cut off mid-run.

    ``ledger`` is filled by the executor for tasks cancelled mid-run (usage, attempts and
    seconds, by task id: one call may hold several tasks with the same id); ``slots`` by
    the batch as results come in.
    """

    __slots__ = ("ledger", "slots")

    def __init__(self) -> None:
        self.ledger: Ledger = {}
        self.slots: list[AgentResult[Any] | None] = []

    def take(self, task_id: str) -> tuple[Usage, int, float]:
        """What one cut-off task with this id had spent (nothing, if it never started)."""
        entries = self.ledger.get(task_id)
        return entries.pop(0) if entries else _NOTHING_SPENT

    def spent(self) -> tuple[Usage, int]:
        """Usage and attempts of every finished slot and every cut-off task so far."""
        usage, attempts = ZERO_USAGE, 0
        for slot in self.slots:
            if slot is not None:
                usage, attempts = usage + slot.usage, attempts + slot.attempts
        for entries in self.ledger.values():
            for spent_usage, spent_attempts, _ in entries:
                usage, attempts = usage + spent_usage, attempts + spent_attempts
        return usage, attempts


_NOTHING_SPENT: tuple[Usage, int, float] = (ZERO_USAGE, 0, 0.0)


class BatchGuard:
    """Revokes a batch whose attempts run elsewhere as one, when it is cancelled as one.

    Every attempt of the batch carries ``batch_id``. Cancelled as a whole (its caller's
    scope, ``fail_fast``), the batch calls ``revoke(batch_id)`` (the transport tells the
    workers, naming the batch) before any of its tasks sees the cancellation: the workers
    then skip its queued attempts and cancel its running ones together, rather than hear
    of them in several messages while the slots the first ones free take the next queued
    ones. So each task runs in a shielded scope (``task_scope``) and the pool's own task
    waits in ``watch`` for the batch's cancellation: it revokes, then cancels the tasks.
    A cancellation from inside one task (a caller-side stage's timeout around its
    attempt) never reaches ``watch``: that attempt alone is stopped (by its transport),
    and the batch, whose later attempts carry the same id, goes on.
    """

    __slots__ = ("_closing", "_revoke", "_scopes", "batch_id", "revoked")

    def __init__(self, batch_id: str, revoke: Callable[[str], Awaitable[None]]) -> None:
        self.batch_id = batch_id
        self._revoke = revoke
        #: The scopes of the tasks running now.
        self._scopes: set[anyio.CancelScope] = set()
        self._closing = anyio.CancelScope()
        #: Set once the batch's cancellation is being passed on: no task starts after it.
        self.revoked = False

    def task_scope(self) -> _TaskScope:
        """Where one task of the batch runs: shielded from the batch's cancellation, which
        ``watch`` passes on once the batch is revoked (``with guard.task_scope() as
        scope:``, the scope being an ``anyio.CancelScope``)."""
        return _TaskScope(self)

    async def watch(self) -> None:
        """Wait (in the pool's own task) until ``close``, or until the batch is cancelled:
        then revoke it, cancel its tasks, and let the cancellation go on."""
        try:
            with self._closing:
                await anyio.sleep_forever()
        except BaseException:
            self.revoked = True
            try:
                with anyio.CancelScope(shield=True):
                    await self._revoke(self.batch_id)
            except Exception:
                log_exception("revoking a cancelled batch failed", batch_id=self.batch_id)
            finally:
                for scope in list(self._scopes):
                    scope.cancel()
            raise

    def close(self) -> None:
        """Every task of the batch has ended: ``watch`` returns."""
        self._closing.cancel()


class _TaskScope:
    """``BatchGuard.task_scope``: a class, not a generator (this runs for every task)."""

    __slots__ = ("_guard", "_scope")

    def __init__(self, guard: BatchGuard) -> None:
        self._guard = guard
        self._scope = anyio.CancelScope(shield=True)

    def __enter__(self) -> anyio.CancelScope:
        scope = self._scope
        scope.__enter__()
        if self._guard.revoked:
            scope.cancel()  # started as its batch is revoked: never to be sent
        self._guard._scopes.add(scope)
        return scope

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        self._guard._scopes.discard(self._scope)
        return bool(self._scope.__exit__(exc_type, exc, traceback))


async def run_pool(
    specs: Sequence[TaskSpec],
    submit: Submit,
    impl: Any,
    origin: Any,
    *,
    agent: str,
    limit: int,
    fail_fast: bool,
    start_whole: bool,
    tally: Tally,
    guard: BatchGuard | None = None,
) -> list[AgentResult[Any]]:
    """Run ``submit(impl, spec, origin)`` for every spec, at most ``limit`` at a time; one
    result per spec.

    ``start_whole``: start all ``limit`` workers at once (agents that always suspend);
    otherwise the pool grows by one each time work suspends. Cancellation of the caller
    propagates once every worker has stopped; with a ``guard``, once the batch is revoked.
    """
    count = len(specs)
    results = tally.slots
    results[:] = [None] * count
    # A pool of at most `limit` workers pulls indices from one shared iterator: the cap
    # holds by construction, and a 100k batch never has 100k coroutines alive at once.
    # The pool grows on demand: a worker starts the next one just before it dispatches,
    # so it grows by one each time work suspends, reaching `limit` at once for I/O-bound
    # agents while agents that never suspend are served by a few workers.
    indices = iter(range(count))
    max_workers = min(limit, count)
    first_failure: list[AgentResult[Any]] = []
    workers = 0
    finished = 0
    spawn_pending = False
    checkpoint_if_cancelled = anyio.lowlevel.checkpoint_if_cancelled
    checkpoint = anyio.lowlevel.checkpoint

    with single_exception():
        async with anyio.create_task_group() as tg:
            cancel_scope = tg.cancel_scope

            def grow() -> None:
                nonlocal workers, spawn_pending
                workers += 1
                spawn_pending = True
                tg.start_soon(worker)

            async def worker() -> None:
                nonlocal spawn_pending, finished
                spawn_pending = False
                try:
                    for done, i in enumerate(indices, 1):
                        if first_failure:
                            return  # fail_fast fired: also stops workers whose agents never yield
                        if not spawn_pending and workers < max_workers:
                            grow()
                        if guard is None:
                            result = await submit(impl, specs[i], origin)
                        else:
                            with guard.task_scope() as scope:
                                result = await submit(impl, specs[i], origin)
                            if scope.cancelled_caught:
                                await checkpoint()  # the batch's cancellation, passed on
                                return
                        results[i] = result
                        if fail_fast and result.error is not None and not first_failure:
                            first_failure.append(result)
                            cancel_scope.cancel()
                        # Cancellation is delivered after every task, even to agents that
                        # never suspend; a full yield every 64 keeps such a batch from
                        # starving the loop.
                        if done % 64:
                            await checkpoint_if_cancelled()
                        else:
                            await checkpoint()
                finally:
                    finished += 1
                    if guard is not None and finished == workers:
                        guard.close()

            for _ in range(max_workers if start_whole else 1):
                grow()
            if guard is not None:
                await guard.watch()

    if first_failure:
        failed = first_failure[0]
        reason = (
            f"cancelled by fail_fast: task {failed.task_id!r} of agent {failed.agent!r} "
            "failed first"
        )
    else:
        # Not reachable through the executor, which turns every failure and every stray
        # cancellation into a result; kept so that no slot can ever come back empty.
        reason = "cancelled: the batch's pool stopped before this task ran"
    out: list[AgentResult[Any]] = []
    for i, slot in enumerate(results):
        if slot is None:
            task_id = specs[i].task_id
            # Cut off mid-run: what it had spent so far; never started: nothing.
            usage, attempts, duration = tally.take(task_id)
            slot = AgentResult._build(
                None, TaskCancelledError(reason), usage, attempts, duration, task_id, agent
            )
            results[i] = slot
        out.append(slot)
    return out


@contextmanager
def single_exception() -> Iterator[None]:
    """Re-raise a lone exception out of a task group's exception group, itself.

    A ``KeyboardInterrupt`` or ``SystemExit`` raised in one task comes out of an AnyIO task
    group wrapped in a ``BaseExceptionGroup`` on Trio (bare on asyncio); both backends raise
    it bare this way. Groups of several exceptions are left as they are.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found
