"""The fleet-wide store of ``RateLimit(store="redis://...")``: the same GCRA as in-process,
kept in Redis hashes and changed only by Lua scripts, so that every process sharing a
limit sees one state and no two admissions race. A limit is a hash (``key_of``); a model
a 429 paused and slowed under it is a hash beside it (``model_key_of``), expiring once the
model's rates have grown back: the admission reads the calling model's along with the
limit's, in the same script.

One round trip admits a call under all its limits in one Redis (one script call over all
their keys, atomic); the corrections from the usage of earlier calls ride along with it
(they are sent with the process's next admission of the same limits), so a call costs one
round trip. Time is Redis's own (``TIME``), in microseconds, so the processes'
clocks need not agree. Under Trio the asyncio Redis client runs on the runtime's asyncio
helper loop, as the distributed transport does.

Why by hand: ``limits`` (hit/test only, no waiting, no weights given back, one round trip
per limit), ``pyrate-limiter`` (waits by polling, no first-come-first-served order, no
correction of a weight already taken, asyncio only) and ``redis-rate-limiters`` (one token
per call, no weights, no several limits at once) each miss the FIFO wait, the correction
after the call, or several limits in one atomic step; the script is 60 lines.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ..errors import RateLimitStoreError
from ._redis import RedisScripts, redacted, store_errors, text

if TYPE_CHECKING:
    from .rate_limit import RateLimit, _Plan

__all__ = ["RedisRateStores"]

_US = 1_000_000
_PREFIX = "murmur:ratelimit:"

# KEYS: per limit its hash (the request and token TATs, 'rt' and 'tt'), then per limit the
# hash of the calling model under it (KEYS[n + i]; its pause 'p' and AIMD scale: see
# _THROTTLE; absent unless a 429 of the model slowed it recently).
# ARGV: delay before which the call may not start (µs), tokens; then per limit: rate of
# requests per period (0: no rpm), burst, tpm (0: none), period (µs), and the pending
# correction, in µs of each bucket (the client priced it): requests (>= 0), tokens (< 0:
# given back).
# When a limit admits a call is the same for every model (the configured tolerances); what
# the call takes of the buckets is 1 / scale times more for a model a 429 slowed.
# Returns: start - now (µs), index of the binding limit (0: none), then per limit the
# request and token TATs before and after, then per limit the model's AIMD scale and its
# pause - now (µs; what ``RateLimit.state`` shows). While a limit pauses the model, no
# place is taken (a place after the pause would hold every call behind it as long, other
# models' too): then the first is the end of the pause - now, and the index is negative.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local start = now + tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
local n = #KEYS / 2
local binding = 0
local paused, pbinding = now, 0
local st = {}
for i = 1, n do
  local b = 2 + (i - 1) * 6
  local rate, burst, tpm = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local period, xr, xt = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5]), tonumber(ARGV[b + 6])
  local h = redis.call('HMGET', KEYS[i], 'rt', 'tt')
  local rt, tt = tonumber(h[1]) or 0, tonumber(h[2]) or 0
  local m = redis.call('HMGET', KEYS[n + i], 'p', 'sf', 'sa')
  local pause, sf, sa = tonumber(m[1]) or 0, tonumber(m[2]) or 1, tonumber(m[3]) or 0
  local scale = 1
  if sf < 1 then
    scale = math.min(1, sf + math.max(0, now - sa) * 0.5 / period)
  end
  local interval, base = 0, 0
  if rate > 0 then
    base = math.ceil(period / rate)
    interval = math.ceil(period / (rate * scale))
  end
  if xr > 0 and interval > 0 then rt = math.max(rt, now) + xr end
  if xt > 0 and tpm > 0 then tt = math.max(tt, now) + xt end
  if xt < 0 and tpm > 0 then tt = tt + xt end
  local cost, fair = 0, 0
  if tpm > 0 and tokens > 0 then
    fair = math.ceil(tokens * period / tpm)
    cost = math.ceil(tokens * period / (tpm * scale))
  end
  if pause > paused then paused = pause; pbinding = i end
  local e = 0
  if interval > 0 then e = math.max(e, rt - (burst - 1) * base) end
  if cost > 0 then e = math.max(e, tt + fair - period) end
  if e > start then start = e; binding = i end
  st[i] = {rt, tt, interval, cost, period, scale, pause}
end
if pbinding > 0 then start = paused; binding = -pbinding end
local out = {0, binding}
for i = 1, n do
  local s = st[i]
  local nrt, ntt = s[1], s[2]
  if pbinding == 0 then
    if s[3] > 0 then nrt = math.max(s[1], start) + s[3] end
    if s[4] > 0 then ntt = math.max(s[2], start) + s[4] end
  end
  redis.call('HSET', KEYS[i], 'rt', string.format('%.0f', nrt), 'tt', string.format('%.0f', ntt))
  redis.call('PEXPIRE', KEYS[i], math.ceil((math.max(nrt, ntt) - now + 2 * s[5]) / 1000))
  for _, v in ipairs({s[1], nrt, s[2], ntt}) do table.insert(out, string.format('%.0f', v)) end
end
for i = 1, n do
  table.insert(out, string.format('%.6f', st[i][6]))
  table.insert(out, string.format('%.0f', st[i][7] - now))
end
out[1] = string.format('%.0f', start - now)
return out
"""

# Give back places (a cancelled waiter): ARGV per limit: old and new request TAT, old and
# new token TAT. A place that is not the last is remembered in KEYS[i] .. ':h' until those
# after it are given back.
_GIVE_BACK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
  local holes = KEYS[i] .. ':h'
  for j, field in ipairs({'rt', 'tt'}) do
    local old = ARGV[(i - 1) * 4 + (j - 1) * 2 + 1]
    local new = ARGV[(i - 1) * 4 + (j - 1) * 2 + 2]
    if old ~= new then
      local tat = redis.call('HGET', KEYS[i], field)
      if tat == new then
        tat = old
        while true do
          local before = redis.call('HGET', holes, field .. tat)
          if not before then break end
          redis.call('HDEL', holes, field .. tat)
          tat = before
        end
        redis.call('HSET', KEYS[i], field, tat)
      else
        redis.call('HSET', holes, field .. new, old)
        redis.call('PEXPIRE', holes, math.max(1, math.ceil((tonumber(new) - now) / 1000) + 1000))
      end
    end
  end
end
return 1
"""

# A 429: KEYS per limit the hash of the model under it; ARGV pause (µs), then per limit
# its period (µs). Pauses the model and halves its rates, once per pause (see
# rate_limit): its scale ('sf') holds until the pause's end ('sa') and grows back from
# there; no new decrease before 'du'. The hash expires once the rates have grown back
# (two periods after the pause: from 1/16, 1.875), so a model is forgotten after it.
# Returns per limit the model's scale now.
_THROTTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local untl = now + tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local period = tonumber(ARGV[1 + i])
  local h = redis.call('HMGET', KEYS[i], 'p', 'sf', 'sa', 'du')
  local pause = math.max(tonumber(h[1]) or 0, untl)
  local sf, sa = tonumber(h[2]) or 1, tonumber(h[3]) or 0
  local scale = 1
  if sf < 1 then scale = math.min(1, sf + math.max(0, now - sa) * 0.5 / period) end
  if now >= (tonumber(h[4]) or 0) then
    scale = math.max(1 / 16, scale * 0.5)
    sa = untl
    redis.call('HSET', KEYS[i], 'sf', tostring(scale),
      'sa', string.format('%.0f', untl), 'du', string.format('%.0f', untl))
  end
  redis.call('HSET', KEYS[i], 'p', string.format('%.0f', pause))
  table.insert(out, string.format('%.6f', scale))
  redis.call('PEXPIRE', KEYS[i], math.ceil((math.max(pause, sa) - now + 2 * period) / 1000))
end
return out
"""


def key_of(limit: RateLimit) -> str:
    """The Redis key of a limit's state."""
    return _PREFIX + limit.name


def model_key_of(limit: RateLimit, model: str | None) -> str:
    """The Redis key of a model's pause and AIMD scale under a limit (``key_of``'s
    sibling: the test fixtures delete ``key_of(limit) + "*"``)."""
    return f"{_PREFIX}{limit.name}:m:{model or ''}"


class _Place:
    """A call's places in one Redis: what to give back if it is cancelled."""

    __slots__ = ("limits", "tats", "until")

    def __init__(self, limits: tuple[RateLimit, ...], tats: list[str], until: float) -> None:
        self.limits = limits
        self.tats = tats
        self.until = until


class RedisRateStores:
    """The Redis connections of one runtime's stored limits, by URL and event loop."""

    def __init__(self) -> None:
        self.redis = RedisScripts(
            {"reserve": _RESERVE, "give_back": _GIVE_BACK, "throttle": _THROTTLE},
            "a RateLimit with store=",
        )
        #: Corrections not sent yet, by limit key: what they take of the request and the
        #: token bucket, in µs (priced at the scale of the calls' model; tokens < 0: given
        #: back).
        self._pending: dict[str, list[int]] = {}
        #: Pauses this process learnt of (its own 429s), by model: until (monotonic).
        self._paused: dict[str | None, float] = {}
        self._asking: anyio.Lock | None = None

    async def _run(
        self, limits: tuple[RateLimit, ...], name: str, keys: list[str], args: list[Any]
    ) -> Any:
        """One script call on the store of ``limits``; ``None`` when it failed open."""
        url = limits[0].store
        assert url is not None
        timeout = max(limit.store_timeout for limit in limits)
        try:
            return await self.redis.run(url, timeout, name, keys, args)
        except store_errors() as exc:
            if all(limit.on_store_error == "open" for limit in limits):
                return None
            raise RateLimitStoreError(
                f"the rate limit store {redacted(url)} did not answer within {timeout:g} s "
                f"({type(exc).__name__}: {exc}); the limits fail closed (on_store_error)"
            ) from exc

    # -- what the middleware calls -------------------------------------------------------

    def _groups(self, plan: _Plan) -> dict[str, tuple[RateLimit, ...]]:
        groups: dict[str, list[RateLimit]] = {}
        for limit in plan.stored:
            assert limit.store is not None
            groups.setdefault(limit.store, []).append(limit)
        return {url: tuple(limits) for url, limits in groups.items()}

    async def reserve(
        self, plan: _Plan, tokens: int, not_before: float
    ) -> tuple[float, RateLimit | None, list[_Place] | None, bool]:
        """Take a place in every stored limit of ``plan``: (seconds to wait, the limit that
        set it, the places, whether the model is paused: then the wait is until the end of
        the pause, and the places taken must be given back)."""
        delay = max(0.0, not_before)
        binding: RateLimit | None = None
        places: list[_Place] = []
        model = plan.model
        if self._asking is None:
            self._asking = anyio.Lock()
        for limits in self._groups(plan).values():
            keys = [key_of(limit) for limit in limits]
            keys += [model_key_of(limit, model) for limit in limits]
            # One admission at a time per runtime, in the order they came (the lock is
            # fair): each answer is read as soon as it arrives, so that the moment a call
            # starts (counted from its answer) is late by one round trip, not by a queue
            # of answers to a burst of calls, which would bunch their starts.
            async with self._asking:
                args: list[Any] = [round(delay * _US), tokens]
                sent: list[tuple[str, list[int]]] = []
                for limit, key in zip(limits, keys, strict=False):
                    extra = self._pending.pop(key, None)
                    if extra is not None:
                        sent.append((key, extra))
                    rpm = limit.rpm
                    args += [
                        0 if rpm is None else max(1, rpm - limit.burst),
                        limit.burst,
                        limit.tpm or 0,
                        round(limit.period * _US),
                        *(extra or (0, 0)),
                    ]
                # Shielded: once the script ran, its places are taken; a cancellation now
                # must give them back, which needs the answer.
                with anyio.CancelScope(shield=True):
                    try:
                        out = await self._run(limits, "reserve", keys, args)
                    except BaseException:
                        self._put_back(sent)
                        raise
                if out is None:  # failed open: the corrections wait for the next call
                    self._put_back(sent)
            if out is None:
                continue
            start = int(out[0]) / _US
            index = int(out[1])
            seen = 2 + 4 * len(limits)
            place = _Place(limits, [text(v) for v in out[2:seen]], anyio.current_time() + start)
            mono = time.monotonic()
            for j, limit in enumerate(limits):
                paused = int(text(out[seen + 2 * j + 1])) / _US
                if paused > 0:
                    limit._seen_pause = max(limit._seen_pause, mono + paused)
                limit._saw(model, float(text(out[seen + 2 * j])), mono + max(0.0, paused))
            if index < 0:  # paused: no place taken in this store
                return max(delay, start), limits[-index - 1], places, True
            places.append(place)
            try:
                await anyio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self.give_back(plan, places)
                raise
            if start > delay:
                delay = start
                binding = limits[index - 1] if index else binding
        return delay, binding, places, False

    def _put_back(self, sent: list[tuple[str, list[int]]]) -> None:
        """Keep corrections whose round trip failed for the next one (a reply lost after
        the script ran charges them twice: later calls wait more, never less)."""
        for key, extra in sent:
            pending = self._pending.setdefault(key, [0, 0])
            pending[0] += extra[0]
            pending[1] += extra[1]

    async def give_back(self, plan: _Plan, places: Any) -> None:
        """Give back the places a cancelled waiter had taken."""
        for place in places or ():
            keys = [key_of(limit) for limit in place.limits]
            await self._run(place.limits, "give_back", keys, place.tats)

    def paused(self, plan: _Plan, places: Any) -> bool:
        """Whether this process learnt of a 429 for the model that outlasts the places."""
        until = self._paused.get(plan.model)
        return until is not None and until > anyio.current_time()

    def correct(self, plan: _Plan, extra_requests: int, extra_tokens: int) -> None:
        """Note a correction, priced at the scale of the model this process last saw; it
        is sent with the next admission under the same limits."""
        for limit in plan.stored:
            scale = limit._seen_scale(plan.model)
            requests = tokens = 0
            if limit.rpm is not None and extra_requests > 0:
                requests = extra_requests * limit._req_interval(scale)
            if limit.tpm is not None and extra_tokens:
                tokens = limit._tok_cost(abs(extra_tokens), scale)
                tokens = tokens if extra_tokens > 0 else -tokens
            if requests or tokens:
                pending = self._pending.setdefault(key_of(limit), [0, 0])
                pending[0] += requests
                pending[1] += tokens

    async def throttle(self, plan: _Plan, pause: float) -> None:
        """A 429 for ``plan.model``: pause it and slow the stored limits, fleet-wide."""
        self._paused[plan.model] = anyio.current_time() + pause
        for limit in plan.stored:
            limit._seen_pause = max(limit._seen_pause, time.monotonic() + pause)
        mono = time.monotonic()
        for limits in self._groups(plan).values():
            keys = [model_key_of(limit, plan.model) for limit in limits]
            args: list[Any] = [round(pause * _US)]
            args += [round(limit.period * _US) for limit in limits]
            out = await self._run(limits, "throttle", keys, args)
            for limit, scale in zip(limits, out or (), strict=False):
                limit._saw(plan.model, float(text(scale)), mono + pause)

    async def aclose(self) -> None:
        """Close the connections (on their loops)."""
        await self.redis.aclose()
