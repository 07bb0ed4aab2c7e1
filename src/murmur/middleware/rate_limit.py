"""RateLimit and RateLimitMiddleware: a provider's requests and tokens per minute, per model,
provider or agent, held in one process or shared by a fleet through Redis.

How a call is admitted
----------------------
Every attempt of a task (a retry is a new request) is admitted by every ``RateLimit`` that
applies to it before it is sent: one request, and the input tokens estimated from the task
(see ``estimate_input_tokens``). Each limit is kept as a GCRA (the "generic cell rate
algorithm": a token bucket held as one timestamp, the *theoretical arrival time*), in whole
microseconds so that its bounds hold exactly:

* **requests**: one every ``period / rate`` with ``rate = max(1, rpm - burst)`` (the
  sustained rate, per period), and up to ``burst`` at once after an idle spell. So in any
  window of ``w`` seconds (half-open) at most ``burst - 1 + ceil(w * rate / period)``
  requests start: ``rpm - 1`` in a window of one period, which leaves one request of slack
  for the jitter between a call's admission and its arrival at the provider (up to one
  interval), so that ``rpm`` holds where the provider counts too. The default ``burst=1``
  paces requests evenly (``rpm - 1`` a period, 99.8% of 600 rpm), which is also what a
  provider that enforces its per-minute limit over shorter intervals accepts.
* **tokens**: a bucket of ``tpm`` tokens refilled at ``tpm / period`` per second, as the
  providers describe their own. A call waits until its estimate fits; one whose estimate is
  larger than ``tpm`` never can, and fails at once with ``RateLimitError``.

A call waits for the latest moment any of its limits names; it reserves its place in every
limit at that moment at once, so the calls that wait are served in the order they asked
(first come, first served, across the fleet when the limits are in Redis). A call cancelled
while it waits gives its place back. After the attempt, the limit is corrected from the
usage it reported: tokens over the estimate are charged (later calls wait for them), tokens
under it are given back, and requests beyond the first (a pydantic-ai run that called tools
makes one request per step) are charged. An attempt that reported no usage at all keeps its
estimate.

Feedback from the provider
--------------------------
An attempt that fails with HTTP 429 pauses every call to its model, under every limit that
applies to it, for the time the provider asked (``Retry-After``, else OpenAI's
``x-ratelimit-reset-*`` or Anthropic's ``anthropic-ratelimit-*-reset`` headers, else
``DEFAULT_PAUSE`` seconds). The model's calls wait out the pause without holding a place
(a place after it would hold every call behind it as long, other models' under a shared
limit too) and take their places when it ends; calls that were already waiting for a
moment inside the pause give theirs back and do the same. Each limit also halves the
model's rates (multiplicative decrease, not below 1/16 of the configured rates; once per
pause, so that a burst of 429s from calls already in flight counts once) and, from the end
of the pause, the model's rates grow back linearly to the configured ones within two
periods (additive increase: by half the configured rate per period).

Pause and slowdown are per (limit, model): the other models a limit applies to (a
provider's, under ``RateLimit(provider=...)``) are neither paused nor slowed. A call of a
slowed model is admitted when any call would be (the limit's configured tolerance:
``burst`` requests, ``tpm`` tokens), and takes ``1 / factor`` times its share of the
limit's buckets: its model's calls are spaced ``1 / factor`` as far, the others' as
configured, and the limit's total stays within its configured rates whatever the mix (the
factor only ever slows). While several models share a busy limit, a slowed model's calls
use more of it per call, so they are fewer. A model is forgotten once its pause is over
and its rates recovered; a limit keeps at most 1,000 slowed models (then it forgets the one
whose last 429 is the oldest, which runs at the configured rates again). In Redis each
model's pause and factor is a key of its own beside the limit's, expiring once recovered.

The default retry policy retries a 429 after its ``Retry-After``; the limiter makes the
other calls of its model wait too.

The middleware is a caller-side stage inside the retry stage: each attempt waits where the
call was made, before it is sent (in broker mode, before it is published: a waiting task
holds no worker's slot). In a ``gather`` the waiting tasks hold their places in the batch's
pool, where every other task waits for the same limits anyway.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import anyio
import pydantic_core
from pydantic import BaseModel

from .._http import retry_hint
from ..errors import (
    InvalidTypeError,
    InvalidValueError,
    RateLimitError,
    RemoteAgentError,
)
from ..events.types import EventType
from ._redis import check_store

if TYPE_CHECKING:
    from .._context import AgentContext
    from .._pipeline import CallNext
    from .._types import TaskSpec

__all__ = [
    "DEFAULT_PAUSE",
    "Clock",
    "MonotonicClock",
    "RateLimit",
    "RateLimitMiddleware",
    "estimate_input_tokens",
    "model_of",
]

#: Seconds a 429 pauses its model when the response says nothing about how long.
DEFAULT_PAUSE = 1.0
#: A 429 multiplies the limits' rates by this, down to ``_MIN_SCALE``.
_DECREASE = 0.5
_MIN_SCALE = 1 / 16
#: After a pause, the rates grow back by this fraction of the configured rates per period.
_RECOVERY_PER_PERIOD = 0.5
#: The most slowed models a limit keeps (then it forgets the one whose 429 is the oldest).
_MAX_MODELS = 1000
#: The most slowed models ``RateLimit.state`` lists.
_SHOWN = 8
_US = 1_000_000

StoreFailure = Literal["closed", "open"]


@runtime_checkable
class Clock(Protocol):
    """Where in-process limits read the time and wait (inject a fake one in tests)."""

    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``now() >= deadline``; cancellable."""
        ...


class MonotonicClock:
    """``time.monotonic``, waited for with ``anyio.sleep``: the default clock."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep(max(0.0, deadline - time.monotonic()))


_MONOTONIC = MonotonicClock()


def estimate_input_tokens(task: TaskSpec) -> int:
    """The default estimate of a task's input tokens: one token per 4 characters of the
    prompt (the task's input as the model receives it: a ``str`` as is, anything else as
    JSON), rounded up, and at least 1.

    It does not count the agent's instructions, tools or message history: a demanding
    caller passes ``RuntimeOptions(token_estimator=...)``. Every estimate is corrected from
    the usage the attempt reports.
    """
    value = task.input
    if isinstance(value, str):
        size = len(value)
    elif isinstance(value, BaseModel):
        size = len(value.model_dump_json())
    else:
        try:
            size = len(pydantic_core.to_json(value))
        except (TypeError, ValueError, pydantic_core.PydanticSerializationError):
            size = len(repr(value))
    return max(1, (size + 3) // 4)


def model_of(agent: Any) -> str | None:
    """The model string an agent calls (``"openai:gpt-4o"``), or ``None`` when it is not
    known (a function agent): what ``RateLimit(model=...)`` and ``provider=`` match."""
    cached = agent.__dict__.get("_murmur_model", _UNSET)
    if cached is not _UNSET:
        return cached  # type: ignore[no-any-return]
    model = getattr(agent, "model", None)  # a function agent's declared model
    if model is None:
        model = getattr(getattr(agent, "agent", None), "model", None)  # pydantic-ai's
    name: str | None
    if model is None:
        name = None
    elif isinstance(model, str):
        name = model
    else:
        system = getattr(model, "system", None)
        model_name = getattr(model, "model_name", None)
        if not isinstance(model_name, str):
            name = None
        elif isinstance(system, str) and not model_name.startswith(f"{system}:"):
            name = f"{system}:{model_name}"
        else:
            name = model_name
    agent.__dict__["_murmur_model"] = name
    return name


_UNSET: Any = object()


class RateLimit:
    """A provider's limit on requests and tokens per period, for the calls it applies to.

    Args:
        model: Applies to calls of this model string (``"openai:gpt-4o"``; a name without a
            provider, ``"gpt-4o"``, matches it under any provider).
        provider: Applies to calls of this provider's models (``"openai"``).
        agent: Applies to calls of the agent with this name (function agents too).
        rpm: Requests per period (per minute by default).
        tpm: Tokens (input + output) per period.
        burst: Requests that may start at once after an idle spell (1 <= burst <= rpm); the
            sustained rate is then ``max(1, rpm - burst)`` per period, so that no window of
            one period holds more than ``rpm - 1`` admissions (one of slack for jitter; see
            the module doc).
        period: The period of ``rpm`` and ``tpm``, in seconds (60: per minute).
        store: ``None`` (this process), or a ``redis://`` / ``rediss://`` URL: the limit is
            then shared by every process using the same URL and ``name``.
        on_store_error: What a call does when the store cannot be reached within
            ``store_timeout``: ``"closed"`` fails it with ``RateLimitStoreError``,
            ``"open"`` lets it through unlimited.
        store_timeout: Seconds a call may wait for the store (each round trip).
        name: The limit's name in events and in the store; by default made from its
            selectors and numbers, so that processes configured alike share it.
        clock: The clock of an in-process limit (tests inject a fake one); all in-process
            limits of a runtime must share one.

    Selectors combine (all must match); a limit with none applies to every call. A
    ``RateLimit`` holds its state (when the next request may start): share one instance
    among runtimes of a process to share the limit, as with a ``TokenBudget``.
    """

    __slots__ = (
        "_interval",
        "_period_us",
        "_req_holes",
        "_req_tat",
        "_seen",
        "_seen_pause",
        "_slowed",
        "_tok_holes",
        "_tok_tat",
        "_waiting",
        "agent",
        "burst",
        "clock",
        "model",
        "name",
        "on_store_error",
        "period",
        "provider",
        "rpm",
        "store",
        "store_timeout",
        "tpm",
    )

    def __init__(
        self,
        *,
        model: str | None = None,
        provider: str | None = None,
        agent: str | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        burst: int = 1,
        period: float = 60.0,
        store: str | None = None,
        on_store_error: StoreFailure = "closed",
        store_timeout: float = 2.0,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        for field, value in (("model", model), ("provider", provider), ("agent", agent)):
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidValueError(f"RateLimit {field} must be a non-empty str or None")
        if rpm is None and tpm is None:
            raise InvalidValueError("RateLimit needs rpm=, tpm= or both")
        for size, count in (("rpm", rpm), ("tpm", tpm)):
            if count is not None and (
                isinstance(count, bool) or not isinstance(count, int) or count < 1
            ):
                raise InvalidValueError(f"RateLimit {size} must be an int >= 1, got {count!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise InvalidValueError(f"RateLimit burst must be an int >= 1, got {burst!r}")
        if rpm is not None and burst > rpm:
            raise InvalidValueError(f"RateLimit burst={burst} is more than rpm={rpm}")
        if (
            isinstance(period, bool)
            or not isinstance(period, (int, float))
            or not math.isfinite(period)
            or round(period * _US) < 1
        ):
            # Kept in whole microseconds: a shorter period would count nothing.
            raise InvalidValueError(
                f"RateLimit period must be seconds > 0 (at least 0.000001), got {period!r}"
            )
        check_store("RateLimit", store, on_store_error, store_timeout)
        if clock is not None and not isinstance(clock, Clock):
            raise InvalidTypeError(
                "RateLimit clock must have now() and `async def sleep_until(deadline)`"
            )
        self.model = model
        self.provider = provider
        self.agent = agent
        self.rpm = rpm
        self.tpm = tpm
        self.burst = burst
        self.period = float(period)
        self.store = store
        self.on_store_error: StoreFailure = on_store_error
        self.store_timeout = float(store_timeout)
        self.clock: Clock = _MONOTONIC if clock is None else clock
        if name is None:
            picked = [
                f"{k}={v}"
                for k, v in (("model", model), ("provider", provider), ("agent", agent))
                if v is not None
            ]
            sizes = [f"{k}={v}" for k, v in (("rpm", rpm), ("tpm", tpm)) if v is not None]
            extra = [f"burst={burst}"] if burst != 1 else []
            extra += [f"period={period:g}"] if period != 60 else []
            name = ",".join(picked or ["all"]) + ":" + ",".join(sizes + extra)
        elif not isinstance(name, str) or not name:
            raise InvalidValueError("RateLimit name must be a non-empty str")
        self.name = name
        self._period_us = round(self.period * _US)
        #: Microseconds between requests at the configured rate.
        self._interval = -(-self._period_us // max(1, rpm - burst)) if rpm is not None else 0
        # In-process state, in whole microseconds of the clock: the theoretical arrival time
        # of each bucket, the places given back by cancelled waiters that were not last
        # (their end -> their start), and the models a 429 paused or slowed (by the last
        # 429 first; a model is forgotten once its pause is over and its rate recovered).
        self._req_tat = 0
        self._tok_tat = 0
        self._req_holes: dict[int, int] = {}
        self._tok_holes: dict[int, int] = {}
        self._slowed: dict[str | None, _Slowed] = {}
        #: Calls of this process sleeping until this limit (and the others of their call)
        #: admits them.
        self._waiting = 0
        #: A stored limit's models below their configured rates, as this process last saw
        #: them (its admissions, its own 429s): model -> (factor, since when it grows back,
        #: on ``time.monotonic``); and the end of the last pause it saw (monotonic).
        self._seen: dict[str | None, tuple[float, float]] = {}
        self._seen_pause = 0.0

    def __repr__(self) -> str:
        return f"RateLimit({self.name!r})"

    def state(self) -> dict[str, Any]:
        """What the limit is doing, cheaply (a worker's heartbeat and status line show it):
        ``factor``, the lowest fraction of the configured rates in force for a model it
        applies to (below 1 after a 429: AIMD, per model); ``slowed``, the models below 1
        and their factors, lowest first (at most ``_SHOWN``); ``waiting``, the calls of this
        process waiting for it; ``paused_until``, the time (``time.time()``) until which a
        429 paused a model it applies to, or ``None``. A stored limit's factors and pause
        are those this process last saw (at its last admission or 429 under it), grown
        back since as the store grows them."""
        if self.store is None:
            now = round(self.clock.now() * _US)
            factors = {
                model: slowed.factor(now, self._period_us) for model, slowed in self._slowed.items()
            }
            left = (max((slowed.pause for slowed in self._slowed.values()), default=0) - now) / _US
        else:
            factors = {model: self._seen_scale(model) for model in self._seen}
            left = self._seen_pause - time.monotonic()
        below = sorted((factor, _shown(model)) for model, factor in factors.items() if factor < 1)
        return {
            "limit": self.name,
            "factor": round(below[0][0], 4) if below else 1.0,
            "slowed": {model: round(factor, 4) for factor, model in below[:_SHOWN]},
            "waiting": self._waiting,
            "paused_until": time.time() + left if left > 0 else None,
        }

    def applies(self, agent: str, model: str | None) -> bool:
        """Whether calls of ``agent`` to ``model`` are held to this limit."""
        if self.agent is not None and self.agent != agent:
            return False
        if self.model is not None:
            if model is None:
                return False
            if self.model != model and (":" in self.model or model.partition(":")[2] != self.model):
                return False
        return self.provider is None or (
            model is not None and model.partition(":")[0] == self.provider
        )

    # -- the in-process buckets (microseconds) ----------------------------------------

    def scale(self, now: int, model: str | None) -> float:
        """The fraction of the configured rates in force for ``model``'s calls at ``now``
        (µs of the clock; AIMD: 1 unless a 429 of the model slowed it). Forgets the model
        once its pause is over and its rate recovered."""
        slowed = self._slowed.get(model) if self._slowed else None
        if slowed is None:
            return 1.0
        factor = slowed.factor(now, self._period_us)
        if factor >= 1.0 and slowed.pause <= now:
            del self._slowed[model]
        return factor

    def _req_interval(self, scale: float) -> int:
        if scale == 1.0:
            return self._interval
        return math.ceil(self._period_us / (max(1, self.rpm - self.burst) * scale))  # type: ignore[operator]

    def _tok_cost(self, tokens: int, scale: float) -> int:
        """Microseconds ``tokens`` take of the bucket at ``scale``; the bucket holds one
        period (``tpm`` tokens at the configured rate)."""
        if scale == 1.0:
            if tokens == self.tpm:
                return self._period_us
            return -(-tokens * self._period_us // self.tpm)  # type: ignore[operator]
        return math.ceil(tokens * self._period_us / (self.tpm * scale))  # type: ignore[operator]

    def _earliest(self, now: int, tokens: int, model: str | None) -> int:
        """The first moment (µs) this limit admits a request of ``tokens`` of ``model``.

        When is the same for every model (the configured tolerance: ``burst`` requests,
        ``tpm`` tokens); what a request then takes of the buckets is ``1 / scale`` times
        more for a model a 429 slowed (``_take``). So a slowed model's requests are spaced
        ``1 / scale`` as far, the others' as configured, and the limit's total never
        exceeds its configured rates, whatever the mix of models."""
        earliest = 0
        if self._slowed:
            slowed = self._slowed.get(model)
            if slowed is not None:
                earliest = slowed.pause
        if self.rpm is not None:
            at = self._req_tat - (self.burst - 1) * self._interval
            if at > earliest:
                earliest = at
        if self.tpm is not None and tokens:
            at = self._tok_tat + self._tok_cost(tokens, 1.0) - self._period_us
            if at > earliest:
                earliest = at
        return earliest

    def _take_now(self, now: int, tokens: int, model: str | None) -> bool:
        """``_earliest`` and ``_take`` at ``now`` in one step, when it admits the call now."""
        scale = 1.0
        if self._slowed:
            slowed = self._slowed.get(model)
            if slowed is not None:
                if slowed.pause > now:
                    return False
                scale = self.scale(now, model)
        req_tat = self._req_tat
        if self.rpm is not None:
            if req_tat - (self.burst - 1) * self._interval > now:
                return False
            req_tat = (req_tat if req_tat > now else now) + self._req_interval(scale)
        if self.tpm is not None and tokens:
            cost = self._tok_cost(tokens, 1.0)
            tok_tat = self._tok_tat
            if tok_tat + cost - self._period_us > now:
                return False
            if scale != 1.0:
                cost = self._tok_cost(tokens, scale)
            self._tok_tat = (tok_tat if tok_tat > now else now) + cost
        self._req_tat = req_tat
        return True

    def _take(self, start: int, tokens: int, model: str | None) -> tuple[int, int, int, int]:
        """Reserve a request of ``tokens`` of ``model`` starting at ``start``: (old, new) of
        each TAT."""
        slowed = self._slowed.get(model) if self._slowed else None
        scale = 1.0 if slowed is None else slowed.factor(start, self._period_us)
        old_req = self._req_tat
        old_tok = self._tok_tat
        if self.rpm is not None:
            self._req_tat = (old_req if old_req > start else start) + self._req_interval(scale)
        if self.tpm is not None and tokens:
            self._tok_tat = (old_tok if old_tok > start else start) + self._tok_cost(tokens, scale)
        return old_req, self._req_tat, old_tok, self._tok_tat

    def _give_back(self, taken: tuple[int, int, int, int], now: int) -> None:
        """Undo a reservation (its waiter was cancelled): exactly, when no later one was
        made; otherwise once every later one has been given back too."""
        old_req, new_req, old_tok, new_tok = taken
        if new_req != old_req:
            self._req_tat = _undo(self._req_tat, old_req, new_req, self._req_holes, now)
        if new_tok != old_tok:
            self._tok_tat = _undo(self._tok_tat, old_tok, new_tok, self._tok_holes, now)

    def _correct(self, now: int, model: str | None, extra_requests: int, extra_tokens: int) -> None:
        """Charge what an attempt of ``model`` used beyond its reservation (or give back
        tokens below), at the model's scale."""
        if (self.tpm is None or not extra_tokens) and (self.rpm is None or extra_requests <= 0):
            return
        scale = self.scale(now, model)
        if self.rpm is not None and extra_requests > 0:
            tat = self._req_tat
            self._req_tat = (tat if tat > now else now) + extra_requests * self._req_interval(scale)
        if self.tpm is not None and extra_tokens:
            if extra_tokens > 0:
                tat = self._tok_tat
                self._tok_tat = (tat if tat > now else now) + self._tok_cost(extra_tokens, scale)
            else:
                self._tok_tat -= self._tok_cost(-extra_tokens, scale)

    def _throttle(self, now: int, pause: int, model: str | None) -> None:
        """A 429 for ``model``: pause it until ``now + pause``; halve its rates, once per
        pause, recovering from its end. Other models are untouched."""
        until = now + pause
        slowed = self._slowed.pop(model, None)
        if slowed is None:
            if len(self._slowed) >= _MAX_MODELS:
                self._forget(now)
            slowed = _Slowed()
        if slowed.pause < until:
            slowed.pause = until
        if now >= slowed.decreased_until:
            slowed.scale_from = max(_MIN_SCALE, slowed.factor(now, self._period_us) * _DECREASE)
            slowed.scale_at = until
            slowed.decreased_until = until
        self._slowed[model] = slowed  # last: the models are kept by their last 429

    def _forget(self, now: int) -> None:
        """Make room for one more slowed model: forget those recovered, else the one whose
        last 429 is the oldest (its calls then run at the configured rates: the limit's
        total still holds)."""
        slowed = self._slowed
        period = self._period_us
        for model, state in list(slowed.items()):
            if state.pause <= now and state.factor(now, period) >= 1.0:
                del slowed[model]
        while len(slowed) >= _MAX_MODELS:
            del slowed[next(iter(slowed))]

    def _saw(self, model: str | None, scale: float, since: float) -> None:
        """A stored limit: note the scale of ``model`` the store answered, growing back from
        ``since`` (``time.monotonic``). At most ``_MAX_MODELS`` are kept (the oldest news is
        forgotten first)."""
        seen = self._seen
        if seen:
            seen.pop(model, None)
        if scale < 1.0:
            if len(seen) >= _MAX_MODELS:
                del seen[next(iter(seen))]
            seen[model] = (scale, since)

    def _seen_scale(self, model: str | None) -> float:
        """A stored limit: the scale of ``model`` now, as this process last saw it."""
        seen = self._seen.get(model) if self._seen else None
        if seen is None:
            return 1.0
        factor, since = seen
        grown = factor + max(0.0, time.monotonic() - since) * _RECOVERY_PER_PERIOD / self.period
        return 1.0 if grown >= 1.0 else grown

    def _paused_until(self, model: str | None) -> int:
        if not self._slowed:
            return 0
        slowed = self._slowed.get(model)
        return 0 if slowed is None else slowed.pause


class _Slowed:
    """A model a 429 paused and slowed under one limit (µs of the limit's clock): the end
    of its pause, and its AIMD scale: ``scale_from`` at ``scale_at`` (the pause's end),
    growing back linearly from there; no new decrease before ``decreased_until``."""

    __slots__ = ("decreased_until", "pause", "scale_at", "scale_from")

    def __init__(self) -> None:
        self.pause = 0
        self.scale_from = 1.0
        self.scale_at = 0
        self.decreased_until = 0

    def factor(self, now: int, period_us: int) -> float:
        start = self.scale_from
        if start >= 1.0:
            return 1.0
        grown = start + max(0, now - self.scale_at) * _RECOVERY_PER_PERIOD / period_us
        return 1.0 if grown >= 1.0 else grown


def _shown(model: str | None) -> str:
    """A model as ``RateLimit.state`` names it (a JSON key)."""
    return "(no model)" if model is None else model


def _undo(tat: int, old: int, new: int, holes: dict[int, int], now: int) -> int:
    if tat != new:
        # Not the last: remember the gap; it closes once those after it give back theirs.
        if len(holes) > 256:
            for end in [end for end in holes if end < now]:
                del holes[end]
        holes[new] = old
        return tat
    tat = old
    while tat in holes:
        tat = holes.pop(tat)
    return tat


# -- 429 --------------------------------------------------------------------------------


def throttle_seconds(error: BaseException) -> float | None:
    """How long a provider's 429 asked to wait (``DEFAULT_PAUSE`` when it did not say), or
    ``None`` when ``error`` is not a 429.

    A 429 is any exception with ``status_code == 429``: pydantic-ai's ``ModelHTTPError``,
    the provider SDKs' own errors (``openai.RateLimitError``, ...), or a worker's failure
    (``RemoteAgentError``) that carried it. Its headers are read from ``error.headers`` or
    ``error.response.headers`` (``murmur._http.retry_hint``); a worker read them where
    the failure happened and sent the reading back (``RemoteAgentError.retry_after``).
    """
    if getattr(error, "status_code", None) != 429:
        return None
    hinted = error.retry_after if isinstance(error, RemoteAgentError) else retry_hint(error)
    return DEFAULT_PAUSE if hinted is None else hinted


# -- the stage --------------------------------------------------------------------------


class _Plan:
    """The limits that apply to one (agent, model), in-process ones and stored ones."""

    __slots__ = ("clock", "limits", "local", "model", "stored", "tokens", "tpm_floor")

    def __init__(self, model: str | None, limits: Sequence[RateLimit]) -> None:
        self.model = model
        self.limits = tuple(limits)
        self.local = tuple(limit for limit in limits if limit.store is None)
        self.stored = tuple(limit for limit in limits if limit.store is not None)
        self.clock = self.local[0].clock if self.local else _MONOTONIC
        tpms = [limit.tpm for limit in limits if limit.tpm is not None]
        #: Whether a token estimate is needed, and the smallest tpm (no bigger call fits).
        self.tokens = bool(tpms)
        self.tpm_floor = min(tpms) if tpms else 0

    def admit_now(self, tokens: int) -> bool:
        """Take a place now in every in-process limit if all admit the call now (no wait)."""
        local = self.local
        now = round(self.clock.now() * _US)
        model = self.model
        if len(local) == 1:
            return local[0]._take_now(now, tokens, model)
        taken: list[tuple[RateLimit, int, int]] = []
        for limit in local:
            before = (limit, limit._req_tat, limit._tok_tat)
            if not limit._take_now(now, tokens, model):
                for earlier, req_tat, tok_tat in taken:  # all or none: put those back
                    earlier._req_tat = req_tat
                    earlier._tok_tat = tok_tat
                return False
            taken.append(before)
        return True


class RateLimitMiddleware:
    """Admits each attempt under the ``RateLimit``s that apply to it (see the module doc).

    Args:
        limits: The limits.
        estimator: Estimates a task's input tokens (default ``estimate_input_tokens``).
    """

    #: Runs where the call was made (see ``murmur.Stage``).
    side = "caller"

    def __init__(
        self,
        limits: Iterable[RateLimit],
        *,
        estimator: Callable[[TaskSpec], int] | None = None,
    ) -> None:
        self.limits = tuple(limits)
        for index, limit in enumerate(self.limits):
            if not isinstance(limit, RateLimit):
                raise InvalidTypeError(
                    f"rate_limits[{index}] must be a murmur.RateLimit, got {type(limit).__name__}"
                )
        clocks = {id(limit.clock) for limit in self.limits if limit.store is None}
        if len(clocks) > 1:
            raise InvalidValueError("the in-process rate_limits of a runtime must share one clock")
        self._estimate = estimator if estimator is not None else estimate_input_tokens
        self._plans: dict[tuple[str, str | None], Any] = {}
        #: The Redis connections of the limits with ``store=`` (fleet-wide), if any.
        self.stores: Any = None
        if any(limit.store is not None for limit in self.limits):
            from ._rate_store import RedisRateStores

            self.stores = RedisRateStores()

    def use_bridge(self, bridge: Callable[[], Any]) -> None:
        """Run the Redis client on ``bridge()``'s asyncio loop under Trio (the runtime's)."""
        if self.stores is not None:
            self.stores.redis.bridge = bridge

    async def aclose(self) -> None:
        """Close the store connections, if any."""
        if self.stores is not None:
            await self.stores.aclose()

    def state(self) -> list[dict[str, Any]]:
        """Each limit's ``RateLimit.state()``."""
        return [limit.state() for limit in self.limits]

    def _plan(self, agent: str, model: str | None) -> _Plan | None:
        key = (agent, model)
        applying = [limit for limit in self.limits if limit.applies(agent, model)]
        plan = _Plan(model, applying) if applying else None
        self._plans[key] = plan
        return plan

    async def __call__(self, ctx: AgentContext, call_next: CallNext) -> Any:
        impl = ctx.impl
        model = impl.__dict__.get("_murmur_model", _UNSET)
        if model is _UNSET:
            model = model_of(impl)
        plan = self._plans.get((impl.name, model), _UNSET)
        if plan is _UNSET:
            plan = self._plan(impl.name, model)
        if plan is None:
            return await call_next(ctx)
        tokens = 0
        if plan.tokens:
            tokens = self._estimate(ctx.task)
            if tokens > plan.tpm_floor:
                raise RateLimitError(
                    f"agent {impl.name!r}: a request of ~{tokens} tokens (estimated) can never "
                    f"fit a rate limit of tpm={plan.tpm_floor}"
                )
        if plan.stored or not plan.admit_now(tokens):
            await self._wait(ctx, plan, tokens)
        # Inline, not a helper coroutine: this runs for every attempt.
        requests = ctx._requests
        used = ctx._input_tokens + ctx._output_tokens
        try:
            return await call_next(ctx)
        except Exception as exc:
            pause = throttle_seconds(exc)
            if pause is not None:
                await self._throttled(plan, pause)
            raise
        finally:
            requests = ctx._requests - requests
            used = ctx._input_tokens + ctx._output_tokens - used
            if requests or used:  # nothing reported: the estimate stands
                extra_tokens = used - tokens if plan.tokens else 0
                if requests > 1 or extra_tokens:
                    self._correct(plan, requests - 1, extra_tokens)

    def _correct(self, plan: _Plan, extra_requests: int, extra_tokens: int) -> None:
        if plan.local:
            now = round(plan.clock.now() * _US)
            for limit in plan.local:
                limit._correct(now, plan.model, extra_requests, extra_tokens)
        if plan.stored and self.stores is not None:
            self.stores.correct(plan, extra_requests, extra_tokens)

    async def _throttled(self, plan: _Plan, pause: float) -> None:
        if plan.local:
            now = round(plan.clock.now() * _US)
            for limit in plan.local:
                limit._throttle(now, round(pause * _US), plan.model)
        if plan.stored and self.stores is not None:
            await self.stores.throttle(plan, pause)

    async def _wait(self, ctx: AgentContext, plan: _Plan, tokens: int) -> None:
        """Take a place in every limit of ``plan`` and wait for it; report the wait."""
        clock = plan.clock
        model = plan.model
        began = clock.now()
        slept = False
        binding: RateLimit | None = None
        while True:
            now = round(clock.now() * _US)
            # A paused model's call waits out the pause without a place: a place after it
            # would hold every call behind it (other models' under a shared limit) as long.
            paused = 0
            for limit in plan.local:
                until = limit._paused_until(model)
                if until > paused:
                    paused, binding = until, limit
            if paused > now:
                slept = True
                await self._sleep(plan, paused)
                continue
            start = now
            for limit in plan.local:
                at = limit._earliest(now, tokens, model)
                if at > start:
                    start, binding = at, limit
            stored_place: Any = None
            if plan.stored and self.stores is not None:
                delay, stored_binding, stored_place, held = await self.stores.reserve(
                    plan, tokens, (start - now) / _US
                )
                # The delay counts from when the script ran, somewhere in the round trip:
                # counted from its end, the call starts late rather than early.
                now = round(clock.now() * _US)
                after = now + round(delay * _US)
                if held:  # the model is paused in the store: no place was taken there
                    if stored_place:
                        with anyio.CancelScope(shield=True):
                            await self._give_back(plan, [], stored_place)
                    slept, binding = True, stored_binding
                    await self._sleep(plan, after)
                    continue
                if after > start:
                    start, binding = after, stored_binding
                if plan.local:
                    # The round trip took time, and others may have taken places meanwhile.
                    for limit in plan.local:
                        at = limit._earliest(now, tokens, model)
                        if at > start:
                            start, binding = at, limit
            places = [(limit, limit._take(start, tokens, model)) for limit in plan.local]
            try:
                if start > now:
                    slept = True
                    await self._sleep(plan, start)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._give_back(plan, places, stored_place)
                raise
            # A 429 may have paused the model meanwhile: then take a new place after it.
            now = round(clock.now() * _US)
            if not any(limit._paused_until(model) > now for limit in plan.local) and not (
                stored_place is not None and self.stores.paused(plan, stored_place)
            ):
                break
            await self._give_back(plan, places, stored_place)
        # Only a call that had to wait reports it (a store's round trip is not a wait).
        waited = clock.now() - began if slept else 0.0
        if waited > 0:
            ctx._rate_limit_wait += waited
            if _WAITED in ctx.origin.wants:
                await ctx.emit(
                    _WAITED,
                    duration=waited,
                    data={
                        "waited": waited,
                        "limit": None if binding is None else binding.name,
                        "limits": [limit.name for limit in (*plan.local, *plan.stored)],
                        "model": model,
                    },
                )

    async def _sleep(self, plan: _Plan, until: int) -> None:
        """Sleep until ``until`` (µs of ``plan.clock``), counted as waiting by its limits."""
        for limit in plan.limits:
            limit._waiting += 1
        try:
            await plan.clock.sleep_until(until / _US)
        finally:
            for limit in plan.limits:
                limit._waiting -= 1

    async def _give_back(
        self, plan: _Plan, places: list[tuple[RateLimit, tuple[int, int, int, int]]], stored: Any
    ) -> None:
        if places:
            now = round(plan.clock.now() * _US)
            for limit, taken in places:
                limit._give_back(taken, now)
        if stored is not None and self.stores is not None:
            await self.stores.give_back(plan, stored)


_WAITED = EventType.RATE_LIMIT_WAITED
