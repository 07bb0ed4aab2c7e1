"""TokenBudget and CostTrackingMiddleware: a hard token allowance shared by a runtime.

The guarantee
-------------
Each task *reserves* tokens before its first attempt and settles after its last: the
reservation is released and the task's real usage (input + output tokens, all attempts)
is charged. A task starts only with a reservation > 0 that is no more than what is free
(``limit - used - reserved``), and a reservation grows (below) only by what is free, so
reservations never add up to more than the limit. A pydantic-ai run is capped
(``UsageLimits.total_tokens_limit``) at what its task reserved, minus what earlier attempts
used. pydantic-ai checks the cap after each model response and before each request. With an
adaptive budget, a run past its cap first *grows* its task's reservation from what is free.
A response that still does not fit ends the run normally if it is the answer (its tokens
are spent either way); otherwise the run is cut off, with ``BudgetExceededError``, before
its next request. So a capped run overshoots its final reservation by at most its last
response. Function agents report usage after the fact and cannot be capped: their
reservation only admits them. Hence, exactly, with ``reservation`` each task's final (grown)
reservation:

    budget.used <= limit + sum over tasks of max(0, usage - reservation)

which is ``<= limit`` whenever runs fit their reservations, and otherwise at most
``limit`` plus one model response per concurrently running pydantic-ai task (plus any
function-agent overshoot).

How much a task reserves
------------------------
With an explicit ``reserve_per_task=R`` every task reserves ``R`` (its *floor* and *ceiling*
are both ``R``) and its runs never grow: ``R`` is a per-run cap. By default the reservation
adapts to what the tasks of each agent (by name) really spend. Until one task of an agent
has settled, nothing is known, and with ``C = reserve_per_task = min(limit, 4096)`` its
tasks reserve ``C // 2`` each (floor and ceiling), or ``C`` when no task holds a reservation
(alone, nothing is gained by reserving less). After that, with ``m`` the mean spend of the
agent's settled tasks (not counting tasks cancelled from outside)::

    floor   = max(1, ceil(4 * m))
    ceiling = max(2 * floor, reserve_per_task)

A task is granted ``free // 64`` clamped to ``[floor, ceiling]``, where ``free`` is what is
neither used nor reserved: the ceiling while the budget is plentiful (``free >= 64 *
ceiling``), shrinking toward the floor as it gets scarce. It is granted only if ``free >=
floor``; otherwise it waits while other tasks hold reservations, and gets all of ``free``
once none does (the last task runs with what is left).

A capped pydantic-ai run past its cap (with an adaptive budget) grows its task's reservation
by what it spent past it, taken whenever that is free, waiters or not: those tokens are
spent already, and refusing them would only throw the run away. When nobody waits it also
takes, if it fits, the share a new task of its agent would be granted now, so that it need
not ask again at once. It never waits, and never takes a share ahead of waiting tasks. A
response that cannot be covered still ends the run if it is the answer; otherwise the run is
cut off before its next request.

Waiting, not refusing, first come first served: waiting tasks form a queue. A settling task
hands what it frees to the head of the queue at once (before any other task can run), and a
task that asks while others wait queues behind them, even if it would fit. It is refused
with ``BudgetExceededError`` only once nothing is in flight and nothing is left, i.e. when
the budget is really spent, and then so is everyone queued behind it. So the tasks of one
call are admitted in the order they asked, and no refused task precedes one that ran.

Spawned children never wait on the shared budget (their ancestors hold reservations there
and wait for them: that would deadlock). A child takes a share if one is free now, ahead of
the queue (it finishes work already admitted); otherwise it borrows from its parent's
reservation, waiting only for siblings that borrowed before it, and is refused once that is
spent and the shared budget still has no share free. What borrowers use is charged with the
parent, so in the bound above a task's ``usage`` includes its borrowing children's. When the
parent is inside a capped pydantic-ai run (a tool spawned the children), the pool is that
run's cap itself: each child's reservation comes off it and the unspent part goes back, so
the parent's run and its children share one allowance. A child's run grows from the pool it
reserved from (a borrower from what its parent has left), and a parent's run grows from the
budget, which also lets its borrowing children have more.

Shared by a fleet (``store="redis://..."``): the same reservations, shares, queue and
refusal, kept in Redis and changed by Lua scripts (see ``_budget_store``), so the bound
above holds fleet-wide. A run cannot grow there (it would need a round trip from inside
pydantic-ai's synchronous check): it is capped at what its task reserved, and a task of an
agent not known yet reserves ``reserve_per_task``.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ..errors import BudgetExceededError, InvalidStateError, InvalidTypeError, InvalidValueError
from ..events.types import EventType
from ._redis import check_store

if TYPE_CHECKING:
    from .._context import AgentContext
    from .._pipeline import CallNext
    from ._budget_store import RedisBudget
    from ._redis import RedisScripts

__all__ = ["CostTrackingMiddleware", "TokenBudget"]

DEFAULT_RESERVE_PER_TASK = 4096
#: A task of a known agent is granted this fraction of what is free (as a shift).
_FREE_SHARE_SHIFT = 6
#: An agent's floor is this many times its mean spend (its ceiling twice that, or more).
_FLOOR_PER_MEAN = 4
#: Until an agent's spend is known, its tasks reserve this fraction of ``reserve_per_task``.
_COLD_SHARE_DIVISOR = 2


class TokenBudget:
    """A token allowance shared by every task of a runtime and by their spawned children.

    Args:
        limit: Total tokens (input + output) the runtime may spend.
        reserve_per_task: Tokens set aside for every task while it runs, and the fixed cap
            of its pydantic-ai runs. By default (``None``) the reservation adapts to what
            each agent's tasks spend and a capped run may grow it while tokens are free (see
            docs/policies.md); this attribute then holds ``min(limit, 4096)``, the most a
            task of an agent whose spend is not known yet is granted.
        store: ``None`` (this process), or a ``redis://`` / ``rediss://`` URL: the budget
            is then shared by every process using the same URL and ``name`` (see
            ``_budget_store`` and docs/policies.md: its runs do not grow, and a task of an
            agent whose spend is not known yet reserves ``reserve_per_task``).
        name: The budget's name in the store; by default made from its numbers.
        on_store_error: What a task does when the store cannot be reached within
            ``store_timeout``: ``"closed"`` fails it with ``BudgetStoreError``, ``"open"``
            runs it unbudgeted (its spend is charged once the store answers again).
        store_timeout: Seconds a task may wait for the store (each round trip).
        lease: Seconds what a process holds outlives its last round trip to the store: a
            process that died (or was not heard of for that long) has its reservations
            charged as spent.

    ``used``, ``reserved`` and ``remaining`` can be read, and ``charge`` called, at any time
    from any thread. Share one budget among runtimes on the same event loop: tasks reserve
    and settle on that loop's thread (a task waiting for tokens is woken through it), where
    each reservation and settlement is a few plain steps with no ``await`` in between, which
    makes it atomic without a lock. (Under Trio, agents on the asyncio bridge thread report
    usage to their context, and the task settles at home.) ``charge`` keeps its own count,
    under a lock, so it never races with them. With a ``store``, the counters are those of
    this process's last round trip, and ``charge`` is sent with its next one.
    """

    def __init__(
        self,
        limit: int,
        *,
        reserve_per_task: int | None = None,
        store: str | None = None,
        name: str | None = None,
        on_store_error: Literal["closed", "open"] = "closed",
        store_timeout: float = 2.0,
        lease: float = 600.0,
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidValueError(f"TokenBudget limit must be an int >= 1, got {limit!r}")
        adaptive = reserve_per_task is None
        if reserve_per_task is None:
            reserve_per_task = min(limit, DEFAULT_RESERVE_PER_TASK)
        elif (
            isinstance(reserve_per_task, bool)
            or not isinstance(reserve_per_task, int)
            or reserve_per_task < 1
        ):
            raise InvalidValueError(
                f"TokenBudget reserve_per_task must be an int >= 1, got {reserve_per_task!r}"
            )
        check_store("TokenBudget", store, on_store_error, store_timeout)
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not lease > 0:
            raise InvalidValueError(f"TokenBudget lease must be seconds > 0, got {lease!r}")
        if name is None:
            name = f"limit={limit}" + ("" if adaptive else f",reserve_per_task={reserve_per_task}")
        elif not isinstance(name, str) or not name:
            raise InvalidValueError("TokenBudget name must be a non-empty str")
        self.limit = limit
        self.reserve_per_task = reserve_per_task
        self.store = store
        self.name = name
        self.on_store_error: Literal["closed", "open"] = on_store_error
        self.store_timeout = float(store_timeout)
        self.lease = float(lease)
        self._used = 0  # charged by settle(), on the event loop's thread
        self._charged = 0  # charged by charge(), from any thread, under _charge_lock
        self._charge_lock = threading.Lock()
        self._reserved = 0
        self._holders = 0
        # Tasks waiting for tokens, first come first served. Never empty while nobody holds
        # a reservation: whoever settles last serves the head, or refuses the lot once spent.
        self._queue: deque[_Waiter] = deque()
        # What an agent's tasks may reserve, by agent name. An agent not in it yet (nothing
        # known) gets `_first`, or `_lone` while no task holds a reservation: then nothing
        # is gained by reserving less. Only an adaptive budget ever fills it (and pools share
        # their budget's).
        self._adaptive = adaptive
        self._lone = _Share(reserve_per_task, reserve_per_task)
        first = max(1, reserve_per_task // _COLD_SHARE_DIVISOR) if adaptive else reserve_per_task
        self._first = _Share(first, first)
        self._least_ceiling = reserve_per_task  # a known agent's ceiling is never below it
        self._shares: dict[str | None, _Share] = {}
        #: Per running task holding a reservation here: the pool its borrowing children
        #: reserve from (shared by every CostTrackingMiddleware of this budget, so a task of
        #: one runtime can lend to a call it makes into another runtime sharing the budget).
        self._lenders: dict[AgentContext, TokenBudget] = {}
        #: Set on a lender once the task that lent is over: what borrowers still running
        #: spend from then on is charged there directly (it can no longer be counted with
        #: the lender's task).
        self._closed_into: TokenBudget | None = None
        #: Shared through Redis: this process's view of the fleet-wide budget (then
        #: ``_used`` and ``_reserved`` hold what the store said last, and ``_charged`` what
        #: ``charge`` took since).
        self._store: RedisBudget | None = None
        if store is not None:
            from ._budget_store import RedisBudget

            self._store = RedisBudget(self)

    @property
    def used(self) -> int:
        """Tokens charged so far."""
        return self._used + self._charged

    @property
    def reserved(self) -> int:
        """Tokens held by running tasks, not yet charged."""
        return self._reserved

    @property
    def remaining(self) -> int:
        """Tokens not yet charged (``limit - used``, never below 0)."""
        return max(0, self.limit - self._used - self._charged)

    @property
    def exhausted(self) -> bool:
        """True once nothing is left to charge."""
        return self._used + self._charged >= self.limit

    def try_reserve(self, key: str | None = None) -> int | None:
        """Reserve without waiting: the tokens granted, or ``None`` if the caller must wait
        (too little is free, or others are already waiting: they come first).

        Args:
            key: Whose spend the reservation is sized by (the middleware passes the agent's
                name); settle with the same key.

        Raises:
            BudgetExceededError: the budget is spent.
            InvalidStateError: the budget is shared through a store (only the runtime's
                stage reserves from it).
        """
        if self._queue:
            return None
        if self._store is not None:
            raise self._stored_refusal()
        share = self._shares.get(key, self._first if self._holders else self._lone)
        floor = share.floor
        free = self.limit - self._used - self._charged - self._reserved
        if free >= floor:  # the common case
            granted = free >> _FREE_SHARE_SHIFT
            if granted < floor:
                granted = floor
            elif granted > share.ceiling:
                granted = share.ceiling
            self._reserved += granted
            self._holders += 1
            return granted
        return self._admit(key)

    def _try_reserve_now(self, key: str | None) -> int | None:
        """``try_reserve`` ahead of any waiting task: for spawned children, whose ancestors
        hold reservations and wait for them (they finish work already admitted)."""
        return self._admit(key)

    def _free(self) -> int:
        return self.limit - self._used - self._charged - self._reserved

    def _hold(self, tokens: int) -> None:
        self._reserved += tokens
        self._holders += 1

    @staticmethod
    def _grant(share: _Share, free: int) -> int:
        """What the rule grants a task of ``share``'s agent from ``free`` tokens; 0 below
        the agent's floor."""
        if free < share.floor:
            return 0
        return min(max(free >> _FREE_SHARE_SHIFT, share.floor), share.ceiling)

    def _admit(self, key: str | None) -> int | None:
        """Reserve what the rule grants now; ``None`` when the caller must wait for holders
        to settle."""
        free = self._free()
        share = self._shares.get(key, self._first if self._holders else self._lone)
        granted = self._grant(share, free)
        if not granted:
            if self._holders:
                return None
            if free <= 0:
                raise self._spent()
            granted = free  # nobody will release anything: the last task gets what is left
        self._hold(granted)
        return granted

    def _grow(self, key: str | None, need: int) -> int:
        """Add at least ``need`` tokens (what a running task's run spent past its
        reservation) to its reservation, if that many are free: the tokens added, else 0."""
        free = self._free()
        if need > free:
            return 0
        extra = need
        if not self._queue:  # a share more, unless that would go ahead of waiting tasks
            share = self._shares.get(key, self._first)
            extra += self._grant(share, free - need)
        self._extend(extra)
        return extra

    def _extend(self, tokens: int) -> None:
        self._reserved += tokens

    def _spent(self) -> BudgetExceededError:
        return BudgetExceededError(f"token budget spent: {self.used} of {self.limit} tokens used")

    async def reserve(self, key: str | None = None) -> int:
        """Reserve tokens for one task, waiting (behind those already waiting) while others
        hold what is left.

        Args:
            key: As for ``try_reserve``.

        Raises:
            BudgetExceededError: the budget is spent.
            InvalidStateError: as for ``try_reserve``.
        """
        granted = self.try_reserve(key)
        if granted is not None:
            return granted
        waiter = _Waiter(key)
        self._queue.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self._settle(waiter.granted, 0, key, False)  # served, then cancelled
            elif not waiter.refused:
                self._queue.remove(waiter)
                self._serve()  # those behind it may fit now
            raise
        if waiter.refused:
            raise self._spent()
        return waiter.granted

    def settle(self, reservation: int, used: int, key: str | None = None) -> None:
        """Release ``reservation`` and charge ``used`` tokens; serves waiting tasks.

        Args:
            reservation: What ``reserve`` or ``try_reserve`` granted.
            used: What the task spent; it also sizes later reservations under ``key``.
            key: As given to ``reserve``.

        Raises:
            InvalidStateError: as for ``try_reserve``.
        """
        if self._store is not None:
            raise self._stored_refusal()
        self._settle(reservation, used, key, True)

    def _stored(self) -> RedisBudget:
        assert self._store is not None
        return self._store

    def _stored_refusal(self) -> InvalidStateError:
        return InvalidStateError(
            f"TokenBudget {self.name!r} is shared through a store: its tasks reserve and "
            "settle through an AgentRuntime's stage, not directly"
        )

    def _settle(self, reservation: int, used: int, key: str | None, learn: bool) -> None:
        self._reserved -= reservation
        self._holders -= 1
        if used > 0:
            self._used += used
        closed_into = self._closed_into
        if closed_into is not None:
            # A lender whose task is over: the borrower's loan and spend go back to where
            # the loan was kept (held there as one more holder while any is out).
            closed_into._release_orphan(reservation, used, last=self._reserved == 0)
        if learn and self._adaptive:
            # Size `key`'s next reservations by the mean spend of its settled tasks.
            share = self._shares.get(key)
            if share is None:
                share = self._shares[key] = _Share(0, 0)
            spent = share.spent + used if used > 0 else share.spent
            settled = share.settled + 1
            share.spent = spent
            share.settled = settled
            floor = (_FLOOR_PER_MEAN * spent + settled - 1) // settled  # rounded up
            if floor < 1:
                floor = 1
            share.floor = floor
            least = self._least_ceiling
            share.ceiling = 2 * floor if 2 * floor > least else least
        if self._queue:
            self._serve()

    def _serve(self) -> None:
        """Hand what is free to the waiting tasks, in the order they came, while the first
        can be served; refuse them all once the budget is spent and nobody holds any."""
        queue = self._queue
        while queue:
            waiter = queue[0]
            try:
                granted = self._admit(waiter.key)
            except BudgetExceededError:
                for refused in queue:
                    refused.refused = True
                    refused.event.set()
                queue.clear()
                return
            if granted is None:
                return
            queue.popleft()
            waiter.granted = granted
            waiter.event.set()

    def _release_orphan(self, reservation: int, used: int, *, last: bool) -> None:
        """Settle a loan kept here for a borrower that outlived its lender's task; ``last``:
        no loan of that lender is out any more."""
        if self._store is not None:
            # The lender was charged the whole loan: only what went beyond it is left.
            self.charge(used - reservation)
            return
        self._reserved -= reservation
        if last:
            self._holders -= 1
        if used > 0:
            self.charge(used)
        if self._queue:
            self._serve()

    def _follow(self, budget: TokenBudget) -> None:
        """Size reservations as ``budget`` does, learning into the same record (a pool that
        lends to children of ``budget``'s tasks)."""
        self._adaptive = budget._adaptive
        self._first = budget._first
        self._lone = budget._lone
        self._least_ceiling = budget._least_ceiling
        self._shares = budget._shares

    def charge(self, tokens: int) -> None:
        """Charge tokens spent outside any task (no reservation involved); any thread."""
        if tokens > 0:
            with self._charge_lock:
                self._charged += tokens

    def __repr__(self) -> str:
        return (
            f"TokenBudget(limit={self.limit}, used={self.used}, reserved={self._reserved}, "
            f"reserve_per_task={self.reserve_per_task})"
        )


class _Share:
    """What one agent's tasks may reserve, and the spend it is sized by."""

    __slots__ = ("ceiling", "floor", "settled", "spent")

    def __init__(self, floor: int, ceiling: int) -> None:
        self.floor = floor
        self.ceiling = ceiling
        self.spent = 0
        self.settled = 0


class _Waiter:
    """A task waiting in a budget's queue, and what it was handed."""

    __slots__ = ("event", "granted", "key", "refused")

    def __init__(self, key: str | None) -> None:
        self.key = key
        self.event = anyio.Event()
        self.granted = 0
        self.refused = False


class CostTrackingMiddleware:
    """Pre-checks the budget before a task, caps its model runs, and charges its usage.

    A refusal emits ``BUDGET_EXCEEDED`` and then raises ``BudgetExceededError``.
    """

    #: Runs where the call was made (see ``murmur.Stage``).
    side = "caller"

    def __init__(self, budget: TokenBudget) -> None:
        if not isinstance(budget, TokenBudget):
            raise InvalidTypeError(f"budget must be a TokenBudget, got {type(budget).__name__}")
        self.budget = budget
        self._lenders = budget._lenders
        #: A budget shared through Redis: this runtime's connections to it.
        self._redis: RedisScripts | None = None
        if budget._store is not None:
            from ._budget_store import budget_scripts

            self._redis = budget_scripts()

    def use_bridge(self, bridge: Callable[[], Any]) -> None:
        """Run the Redis client on ``bridge()``'s asyncio loop under Trio (the runtime's)."""
        if self._redis is not None:
            self._redis.bridge = bridge

    async def aclose(self) -> None:
        """Close the store connections, if any."""
        if self._redis is not None:
            await self._redis.aclose()

    async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
        budget = self.budget
        pool = budget
        key = ctx.agent
        # Shared through Redis (``store=``): a round trip reserves (or queues, first come
        # first served across the fleet) and one settles; `n` names the reservation there.
        redis = self._redis
        n = 0
        reservation: int | None  # None: the store failed open
        try:
            parent = ctx.parent
            if parent is None:
                parent = _outer_holder(ctx, budget)
            if parent is None or parent.token_cap is None:
                if redis is None:
                    granted = budget.try_reserve(key)  # the common case: no waiting, no coroutine
                    reservation = await budget.reserve(key) if granted is None else granted
                else:
                    reservation, n = await budget._stored().reserve(redis, key)
            else:
                # A spawned child never waits on the shared budget: its ancestors hold
                # reservations there while they wait for it. A share if one is free now
                # (ahead of waiting tasks: it finishes admitted work), or borrow.
                held = await self._reserve_now(key)
                if held is None:
                    try:
                        pool = self._lender(parent)
                        held = await pool.reserve(key), 0
                    except BudgetExceededError:
                        # The parent's share is spent; tokens may have come free meanwhile.
                        pool = budget
                        held = await self._reserve_now(key)
                        if held is None:
                            raise
                reservation, n = held
        except BudgetExceededError:
            await ctx.emit(EventType.BUDGET_EXCEEDED, data=_budget_data(budget))
            raise
        # No cap when a store failed open: the task runs unbudgeted, and is charged later.
        ctx.token_cap = reservation
        ctx._budget = budget
        growth = None
        if ctx.impl.asyncio_only and pool._adaptive and (redis is None or pool is not budget):
            # A pydantic-ai run, which may grow the reservation as it goes (`run_growth`);
            # not from a store, which cannot be asked from inside the run.
            growth = _growing[ctx] = _Growth(ctx, pool, key)
        ended = False  # by a result or an error, not cancelled: its spend is worth learning
        try:
            output = await call_next(ctx)
        except Exception as exc:
            ended = True
            if isinstance(exc, BudgetExceededError):
                await ctx.emit(EventType.BUDGET_EXCEEDED, data=_budget_data(budget))
            raise
        else:
            ended = True
            return output
        finally:
            ctx.token_cap = None
            ctx._budget = None
            if growth is not None:
                del _growing[ctx]
                growth.pool = None  # grows no more
                reservation = (reservation or 0) + growth.grown
            spent = ctx._input_tokens + ctx._output_tokens  # ctx.total_tokens, inlined
            kept = 0
            if self._lenders:
                lent = self._lenders.pop(ctx, None)
                if lent is not None:
                    spent += lent.used
                    # Borrowers still running (a job the task handed elsewhere) keep what
                    # they borrowed reserved where this task's reservation came from, and
                    # are charged there directly when they settle.
                    kept = lent._reserved
                    lent._closed_into = pool
            if redis is not None and pool is budget:
                # Borrowers still running are charged their whole loan now, and what they
                # spend beyond it when they settle (``_release_orphan``).
                with anyio.CancelScope(shield=True):
                    await budget._stored().settle(
                        redis, n, reservation or 0, spent + kept, key, learn=ended
                    )
            else:
                # What is still out on loan stays reserved here, held by one holder until
                # the last borrower settles (newcomers wait for it: it is neither granted
                # nor counted as spent).
                pool._settle((reservation or 0) - kept, spent, key, ended)
                if kept:
                    pool._holders += 1
                if pool is not budget and parent is not None and parent.token_cap is not None:
                    # What a borrower spent is gone from its parent's reservation for good.
                    parent.token_cap -= spent

    async def _reserve_now(self, key: str) -> tuple[int | None, int] | None:
        """A spawned child's share of the budget if one is free now (ahead of waiting
        tasks), with its id in the store; ``None`` when none is."""
        if self._redis is None:
            granted = self.budget._try_reserve_now(key)
            return None if granted is None else (granted, 0)
        return await self.budget._stored().reserve_now(self._redis, key)

    def _lender(self, parent: AgentContext) -> TokenBudget:
        lent = self._lenders.get(parent)
        run = parent._capped_run
        if run is not None:
            # The parent is inside a capped pydantic-ai run (its tool spawned us): the run's
            # cap is the pool, shared with its children, so together they stay within it.
            if not isinstance(lent, _RunPool) or lent.limits is not run[0]:
                spent_before = 0 if lent is None else lent.used
                lent = _RunPool(run[0], run[1], parent.agent)
                lent._follow(self.budget)
                lent.carry(spent_before)
                self._lenders[parent] = lent
            return lent
        if lent is None:
            left = (parent.token_cap or 0) - parent.usage.total_tokens
            if left < 1:
                raise BudgetExceededError(
                    f"agent {parent.agent!r} has spent the tokens reserved for it and its children"
                )
            lent = self._lenders[parent] = TokenBudget(left)
            lent._follow(self.budget)
        return lent


def _outer_holder(ctx: AgentContext, budget: TokenBudget) -> AgentContext | None:
    """The nearest running task up the chain of calls this top-level task was made from
    (through other runtimes) that holds a reservation drawn from ``budget``, if any: the
    call borrows from it as a child would (waiting on the shared budget would wait for that
    very task)."""
    candidate = ctx.origin.outer
    while candidate is not None:
        if (
            not candidate._finished
            and candidate.token_cap is not None
            and candidate._budget is budget
        ):
            return candidate
        parent = candidate.parent
        candidate = parent if parent is not None else candidate.origin.outer
    return None


class _RunPool(TokenBudget):
    """A parent's capped pydantic-ai run, lending what is left of its cap to its children.

    A child's reservation comes off the run's cap (``UsageLimits.total_tokens_limit``,
    which pydantic-ai checks after each response), and what it did not spend goes back when
    it settles: the parent's run and its borrowing children share one allowance. Siblings
    wait for each other as in a ``TokenBudget``; ``used`` is what the children spent.
    """

    def __init__(self, limits: Any, usage: Any, agent: str) -> None:
        super().__init__(1)  # `limit` unused: the run's cap rules
        self.limits = limits
        self._run_usage = usage
        self._agent = agent

    def carry(self, used: int) -> None:
        """Count what children of an earlier attempt of the parent spent."""
        self._used += used

    def try_reserve(self, key: str | None = None) -> int | None:
        return None if self._queue else self._admit(key)

    def _free(self) -> int:
        return int(self.limits.total_tokens_limit - self._run_usage.total_tokens)

    def _hold(self, tokens: int) -> None:
        self.limits.total_tokens_limit -= tokens
        super()._hold(tokens)

    def _extend(self, tokens: int) -> None:
        self.limits.total_tokens_limit -= tokens
        super()._extend(tokens)

    def _spent(self) -> BudgetExceededError:
        return BudgetExceededError(
            f"agent {self._agent!r} has spent the tokens reserved for it and its children"
        )

    def _settle(self, reservation: int, used: int, key: str | None, learn: bool) -> None:
        self.limits.total_tokens_limit += reservation - used
        super()._settle(reservation, used, key, learn)


class _Growth:
    """A running pydantic-ai task's way to grow its reservation, and how much it grew."""

    __slots__ = ("ctx", "grown", "key", "pool")

    def __init__(self, ctx: AgentContext, pool: TokenBudget, key: str | None) -> None:
        self.ctx = ctx
        self.pool: TokenBudget | None = pool
        self.key = key
        self.grown = 0

    def grow(self, limits: Any, spent: int) -> None:
        """Raise ``limits.total_tokens_limit`` to at least ``spent`` if the pool grants the
        tokens; on the budget's thread."""
        need = spent - limits.total_tokens_limit
        pool = self.pool
        if need <= 0 or pool is None:
            return
        extra = pool._grow(self.key, need)
        if extra:
            self.grown += extra
            limits.total_tokens_limit += extra
            cap = self.ctx.token_cap
            if cap is not None:
                self.ctx.token_cap = cap + extra


#: The running tasks whose pydantic-ai runs may grow their reservations.
_growing: dict[AgentContext, _Growth] = {}


def run_growth(ctx: AgentContext) -> Callable[[Any, int], None] | None:
    """How a capped pydantic-ai run of ``ctx``'s task asks for more tokens, or ``None`` when
    its reservation is fixed (or the task was sent from elsewhere).

    The function takes the run's ``UsageLimits`` and the tokens the run has spent, and
    raises ``total_tokens_limit`` to cover them (and more) if the budget grants it; called
    from the thread the run is on, it never waits for tokens.
    """
    growth = _growing.get(ctx)
    if growth is None:
        return None
    home = ctx.home
    if home is None or not home.is_away():
        return growth.grow
    grow = growth.grow
    token = home._token

    def grow_at_home(limits: Any, spent: int) -> None:
        # Under Trio the run is on the asyncio bridge thread, while the budget is touched only
        # on the runtime's: grow there, this thread waiting the moment that takes.
        import trio

        with contextlib.suppress(trio.RunFinishedError):  # over: nothing grows any more
            trio.from_thread.run_sync(grow, limits, spent, trio_token=token)

    return grow_at_home


def _budget_data(budget: TokenBudget) -> dict[str, Any]:
    return {"limit": budget.limit, "used": budget.used, "reserved": budget.reserved}
