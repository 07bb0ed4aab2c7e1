"""The fleet-wide state of ``TokenBudget(store="redis://...")``: the in-process budget's
reservations, first-come-first-served queue and adaptive shares, kept in Redis and changed
only by Lua scripts, so that every process sharing a budget sees one state.

Keys, for a budget ``B = murmur:budget:NAME``:

* ``B`` (hash): ``used``, ``reserved``, ``holders``, ``seq`` (the queue's order), and per
  agent key the spend learnt from its settled tasks (``n:KEY`` tasks, ``s:KEY`` tokens).
* ``B:p:PROC`` (hash): what process ``PROC`` holds, by reservation id; ``B:px`` (sorted
  set): when each process's hold lapses (``lease`` after its last round trip). A lapsed
  process's reservations are charged as spent (they may have been), and a settlement that
  comes after all corrects the charge.
* ``B:q`` (sorted set, by ``seq``): the waiting tasks, ``PROC/ID``; ``B:qk`` (hash): each
  one's agent key; ``B:wx`` (sorted set): until when each waiting process is alive (it
  polls well within ``WAIT_LEASE``). A waiter whose process lapsed is dropped.
* ``B:g:PROC`` (hash): grants (or ``-1``: refusals) handed to ``PROC``'s waiters, not yet
  collected; ``B:gx`` (sorted set): until when each may be collected. A grant nobody
  collected in time is released.

One round trip reserves (or queues) a task; one settles it. A waiter polls, at most every
``POLL_MOST`` seconds, only one per process (for all its waiters); a settlement in this
process that served one of its waiters polls at once.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ..errors import BudgetStoreError
from ._redis import RedisScripts, redacted, store_errors

if TYPE_CHECKING:
    from .cost_tracking import TokenBudget

__all__ = ["POLL_MOST", "WAIT_LEASE", "RedisBudget", "budget_scripts"]

_US = 1_000_000
_PREFIX = "murmur:budget:"
#: A waiting process polls after this many seconds first, then twice as long each time...
_POLL_FIRST = 0.005
#: ...up to this.
POLL_MOST = 0.1
#: Seconds a waiting process's place in the queue (and a grant it has not collected yet)
#: outlives its last round trip.
WAIT_LEASE = 10.0

# ARGV for every script: limit, reserve_per_task, adaptive (1/0), process id, hold lease
# (µs), wait lease (µs), whether the process has waiters (1/0), tokens charged by
# ``charge()`` since its last round trip; then the script's own. Each returns used,
# reserved, then its own.
_PRELUDE = """
local B = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, C, adaptive = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local proc, lease, wlease = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local h = redis.call('HMGET', B, 'used', 'reserved', 'holders')
local used = (tonumber(h[1]) or 0) + tonumber(ARGV[8])
local reserved, holders = tonumber(h[2]) or 0, tonumber(h[3]) or 0
local function num(v) return string.format('%.0f', v) end
redis.call('ZADD', B .. ':px', now + lease, proc)
if ARGV[7] == '1' then redis.call('ZADD', B .. ':wx', now + wlease, proc) end
-- A process not heard of for its lease is gone: what it held is charged (it may be spent).
for _, p in ipairs(redis.call('ZRANGEBYSCORE', B .. ':px', '-inf', now, 'LIMIT', 0, 16)) do
  for _, v in ipairs(redis.call('HVALS', B .. ':p:' .. p)) do
    used = used + tonumber(v); reserved = reserved - tonumber(v); holders = holders - 1
  end
  redis.call('DEL', B .. ':p:' .. p)
  redis.call('ZREM', B .. ':px', p)
end
redis.call('ZREMRANGEBYSCORE', B .. ':wx', '-inf', now)
-- A grant its waiter did not collect in time (gone, or gave up) is released.
for _, m in ipairs(redis.call('ZRANGEBYSCORE', B .. ':gx', '-inf', now, 'LIMIT', 0, 16)) do
  local p, n = string.match(m, '^(%w+)/(%d+)$')
  local g = tonumber(redis.call('HGET', B .. ':g:' .. p, n) or '0')
  if g > 0 then reserved = reserved - g; holders = holders - 1 end
  redis.call('HDEL', B .. ':g:' .. p, n)
  redis.call('ZREM', B .. ':gx', m)
end

local function share(key)
  if adaptive then
    local s = redis.call('HMGET', B, 'n:' .. key, 's:' .. key)
    local settled = tonumber(s[1]) or 0
    if settled > 0 then
      local floor = math.max(1, math.ceil(4 * (tonumber(s[2]) or 0) / settled))
      return floor, math.max(2 * floor, C)
    end
  end
  return C, C
end

-- What a task of `key` is granted now: > 0; 0: it waits; -1: the budget is spent.
local function grant(key)
  local free = limit - used - reserved
  local floor, ceiling = share(key)
  if free >= floor then return math.min(math.max(math.floor(free / 64), floor), ceiling) end
  if holders > 0 then return 0 end
  if free <= 0 then return -1 end
  return free
end

local function unqueue(m)
  redis.call('ZREM', B .. ':q', m)
  redis.call('HDEL', B .. ':qk', m)
end

local function hand(m, g)
  local p, n = string.match(m, '^(%w+)/(%d+)$')
  redis.call('HSET', B .. ':g:' .. p, n, g)
  redis.call('ZADD', B .. ':gx', now + wlease, m)
  unqueue(m)
end

-- Hand what is free to the waiting tasks in the order they came, while the first can be
-- served; refuse them all once the budget is spent.
local function serve()
  while true do
    local m = redis.call('ZRANGE', B .. ':q', 0, 0)[1]
    if not m then return end
    local p = string.match(m, '^(%w+)/')
    if not redis.call('ZSCORE', B .. ':wx', p) then
      unqueue(m)
    else
      local g = grant(redis.call('HGET', B .. ':qk', m) or '')
      if g == 0 then return end
      if g < 0 then
        for _, w in ipairs(redis.call('ZRANGE', B .. ':q', 0, -1)) do hand(w, -1) end
        return
      end
      reserved = reserved + g; holders = holders + 1
      hand(m, g)
    end
  end
end

-- Give back whatever reservation `n` of this process holds or was handed.
local function release(n)
  local amount = redis.call('HGET', B .. ':p:' .. proc, n)
  if amount then
    redis.call('HDEL', B .. ':p:' .. proc, n)
    reserved = reserved - tonumber(amount); holders = holders - 1
  end
  return amount
end

local function save(out)
  redis.call('HSET', B, 'used', num(used), 'reserved', num(reserved), 'holders', num(holders))
  table.insert(out, 1, num(reserved))
  table.insert(out, 1, num(used))
  return out
end
"""

# ARGV 9: agent key; 10: "q" (queue if it must wait) or "n" (now or never: a spawned
# child); 11: the reservation's id in this process. Returns the tokens granted (> 0), 0
# (queued, or no place now), or -1 (the budget is spent).
_RESERVE = (
    _PRELUDE
    + """
local key, mode, n = ARGV[9], ARGV[10], ARGV[11]
serve()
local g = 0
if mode == 'n' or redis.call('ZCARD', B .. ':q') == 0 then g = grant(key) end
if g > 0 then
  reserved = reserved + g; holders = holders + 1
  redis.call('HSET', B .. ':p:' .. proc, n, g)
elseif g == 0 and mode == 'q' then
  local m = proc .. '/' .. n
  redis.call('ZADD', B .. ':q', redis.call('HINCRBY', B, 'seq', 1), m)
  redis.call('HSET', B .. ':qk', m, key)
  redis.call('ZADD', B .. ':wx', now + wlease, proc)
end
return save({g})
"""
)

# ARGV 9...: this process's waiting ids. Returns per id: the tokens granted (> 0, now held),
# -1 (refused: the budget is spent), 0 (still waiting) or -2 (not queued any more: its
# process was not heard of in time; it asks again).
_POLL = (
    _PRELUDE
    + """
serve()
local out = {}
for i = 9, #ARGV do
  local n = ARGV[i]
  local g = redis.call('HGET', B .. ':g:' .. proc, n)
  if g then
    redis.call('HDEL', B .. ':g:' .. proc, n)
    redis.call('ZREM', B .. ':gx', proc .. '/' .. n)
    if tonumber(g) > 0 then redis.call('HSET', B .. ':p:' .. proc, n, g) end
    table.insert(out, g)
  elseif redis.call('ZSCORE', B .. ':q', proc .. '/' .. n) then
    table.insert(out, 0)
  else
    table.insert(out, -2)
  end
end
return save(out)
"""
)

# ARGV 9: the reservation's id; 10: what it was granted; 11: tokens spent; 12: agent key;
# 13: learn from it (1/0). Returns the ids this process's waiters were handed something for.
_SETTLE = (
    _PRELUDE
    + """
local spent = tonumber(ARGV[11])
if release(ARGV[9]) then
  used = used + spent
else
  -- Its hold lapsed (charged as spent then), or it held nothing (it failed open).
  used = used + spent - tonumber(ARGV[10])
end
if ARGV[13] == '1' and adaptive then
  redis.call('HINCRBY', B, 'n:' .. ARGV[12], 1)
  redis.call('HINCRBY', B, 's:' .. ARGV[12], math.max(0, spent))
end
serve()
return save(redis.call('HKEYS', B .. ':g:' .. proc))
"""
)

# ARGV 9: an id of this process whose reservation is given back, whatever became of it:
# queued, handed a grant, or holding one.
_RELEASE = (
    _PRELUDE
    + """
local n = ARGV[9]
local m = proc .. '/' .. n
if redis.call('ZSCORE', B .. ':q', m) then unqueue(m) end
local g = tonumber(redis.call('HGET', B .. ':g:' .. proc, n) or '0')
if g > 0 then reserved = reserved - g; holders = holders - 1 end
redis.call('HDEL', B .. ':g:' .. proc, n)
redis.call('ZREM', B .. ':gx', m)
release(n)
serve()
return save({})
"""
)


def budget_scripts() -> RedisScripts:
    """The connections a runtime's budget stage uses for a stored budget."""
    return RedisScripts(
        {"reserve": _RESERVE, "poll": _POLL, "settle": _SETTLE, "release": _RELEASE},
        "a TokenBudget with store=",
    )


class _Waiter:
    """A task of this process waiting in the store's queue, and what it was handed."""

    __slots__ = ("event", "granted", "lost", "refused")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted: int | None = 0  # None: the store failed open while it waited
        self.refused = False
        self.lost = False


class RedisBudget:
    """One ``TokenBudget(store=...)`` as this process sees and changes it (one process id,
    its waiters, and what could not be sent yet).

    Every method takes the ``RedisScripts`` of the runtime making the call (the
    connections are the runtime's, on its loop or its asyncio helper loop).
    """

    def __init__(self, budget: TokenBudget) -> None:
        assert budget.store is not None
        self.budget = budget
        self.url: str = budget.store
        self.key = _PREFIX + budget.name
        self.proc = uuid.uuid4().hex[:16]
        self._ids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self._poller: _Waiter | None = None
        self._polling = False
        self._asking: anyio.Lock | None = None
        self._poll_again = False
        #: Releases and settlements the store did not take (it was down), sent again
        #: before the next round trip.
        self._unsent: list[tuple[str, list[Any]]] = []

    async def _call(self, redis: RedisScripts, name: str, extra: list[Any]) -> list[Any] | None:
        """One script call; its own part of the answer, or ``None`` when it failed open."""
        budget = self.budget
        with budget._charge_lock:
            charged, budget._charged = budget._charged, 0
        args = [
            budget.limit,
            budget.reserve_per_task,
            int(budget._adaptive),
            self.proc,
            round(budget.lease * _US),
            round(WAIT_LEASE * _US),
            int(bool(self._waiters)),
            charged,
            *extra,
        ]
        try:
            out = await redis.run(self.url, budget.store_timeout, name, [self.key], args)
        except store_errors() as exc:
            budget.charge(charged)  # sent with a later round trip
            if budget.on_store_error == "open":
                return None
            raise BudgetStoreError(
                f"the token budget store {redacted(self.url)} did not answer within "
                f"{budget.store_timeout:g} s ({type(exc).__name__}: {exc}); the budget "
                "fails closed (on_store_error)"
            ) from exc
        budget._used = int(out[0])
        budget._reserved = int(out[1])
        return list(out[2:])

    async def _send(self, redis: RedisScripts, name: str, extra: list[Any]) -> list[Any] | None:
        """``_call`` for what must reach the store some time: kept to send again if it
        does not now (``None`` then)."""
        try:
            out = await self._call(redis, name, extra)
        except BudgetStoreError:
            out = None
        if out is None:
            self._unsent.append((name, extra))
        return out

    async def _flush(self, redis: RedisScripts) -> None:
        """Send what the store did not take before, in order, while it takes it."""
        while self._unsent:
            name, extra = self._unsent.pop(0)
            try:
                out = await self._call(redis, name, extra)
            except BudgetStoreError:
                out = None
            if out is None:
                self._unsent.insert(0, (name, extra))
                return

    async def _take(self, redis: RedisScripts, key: str, n: int, mode: str) -> int | None:
        """Reserve (or queue) ``n``: what the script answered, ``None`` if it failed open."""
        if self._asking is None:
            self._asking = anyio.Lock()
        # One at a time, in the order the tasks asked (the lock is fair), so that Redis
        # sees this process's tasks in that order too.
        async with self._asking:
            with anyio.CancelScope(shield=True):
                # Shielded: once the script ran, what it reserved must be given back.
                if self._unsent:
                    await self._flush(redis)
                try:
                    out = await self._call(redis, "reserve", [key, mode, n])
                except BudgetStoreError:
                    self._unsent.append(("release", [n]))  # it may have run
                    raise
        if out is None:
            self._unsent.append(("release", [n]))
            return None
        status = int(out[0])
        if status < 0:
            raise self.budget._spent()
        if status > 0:
            try:
                await anyio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._send(redis, "release", [n])
                raise
        return status

    async def reserve(self, redis: RedisScripts, key: str) -> tuple[int | None, int]:
        """Reserve for a task of ``key``, waiting behind those already waiting: (tokens
        granted, the reservation's id); the tokens are ``None`` when the store failed open
        (the task runs unbudgeted).

        Raises:
            BudgetExceededError: the budget is spent.
            BudgetStoreError: the store did not answer, and the budget fails closed.
        """
        while True:
            n = next(self._ids)
            status = await self._take(redis, key, n, "q")
            if status != 0:
                return status, n
            waiter = self._waiters[n] = _Waiter()
            try:
                await self._wait(redis, waiter)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._send(redis, "release", [n])
                raise
            finally:
                del self._waiters[n]
                if self._poller is waiter:
                    self._poller = None
            if waiter.refused:
                raise self.budget._spent()
            if not waiter.lost:
                return waiter.granted, n
            # Dropped from the queue (this process was not heard of in time): queue again.

    async def reserve_now(self, redis: RedisScripts, key: str) -> tuple[int | None, int] | None:
        """``reserve`` ahead of any waiting task, without waiting: ``None`` when nothing can
        be granted now (for spawned children, whose ancestors hold reservations)."""
        n = next(self._ids)
        status = await self._take(redis, key, n, "n")
        return None if status == 0 else (status, n)

    async def _wait(self, redis: RedisScripts, waiter: _Waiter) -> None:
        """Until ``waiter`` is handed something; one waiter of the process polls for all."""
        delay = _POLL_FIRST
        while not waiter.event.is_set():
            if self._poller is None:
                self._poller = waiter
            polling = self._poller is waiter
            with anyio.move_on_after(delay if polling else POLL_MOST):
                await waiter.event.wait()
            if polling and not waiter.event.is_set():
                await self._poll(redis)
                delay = min(2 * delay, POLL_MOST)

    async def _poll(self, redis: RedisScripts) -> None:
        """Collect what this process's waiters were handed; one poll at a time (one asked
        for meanwhile is made right after)."""
        if self._polling:
            self._poll_again = True
            return
        self._polling = True
        try:
            with anyio.CancelScope(shield=True):  # what it collects must reach its waiters
                self._poll_again = True
                while self._poll_again:
                    self._poll_again = False
                    await self._collect(redis)
        finally:
            self._polling = False

    async def _collect(self, redis: RedisScripts) -> None:
        ids = [n for n, waiter in self._waiters.items() if not waiter.event.is_set()]
        if not ids:
            return
        if self._unsent:
            await self._flush(redis)
        out = await self._call(redis, "poll", ids)
        for n, answer in zip(ids, out or [None] * len(ids), strict=True):
            waiter = self._waiters.get(n)
            if waiter is None:
                continue  # cancelled meanwhile: it gives back whatever it was handed
            if answer is None:
                waiter.granted = None  # failed open
                self._unsent.append(("release", [n]))
            else:
                status = int(answer)
                if status == 0:
                    continue
                if status > 0:
                    waiter.granted = status
                else:
                    waiter.refused = status == -1
                    waiter.lost = status == -2
            waiter.event.set()

    async def settle(
        self,
        redis: RedisScripts,
        n: int,
        reservation: int,
        spent: int,
        key: str,
        *,
        learn: bool,
    ) -> None:
        """Give back reservation ``n`` of ``reservation`` tokens and charge ``spent``; what
        the store does not take now is sent with a later round trip."""
        if self._unsent:
            await self._flush(redis)
        handed = await self._send(redis, "settle", [n, reservation, spent, key, int(learn)])
        waiters = self._waiters
        if handed and any(int(handed_id) in waiters for handed_id in handed):
            # It served some of this process's waiters: tell them now, not at their poll.
            with contextlib.suppress(BudgetStoreError):  # else their poller tries again
                await self._poll(redis)
