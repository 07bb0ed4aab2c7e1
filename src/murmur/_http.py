"""When a failed HTTP call says to come back: ``Retry-After`` and the providers' rate-limit
reset headers, read from the exception where it happened (a worker sends the reading
back with the failure, as ``ErrorInfo.retry_after``: the headers stay there)."""

from __future__ import annotations

import email.utils
import math
import re
import time
from typing import Any

from ._lazy import loaded_class

__all__ = ["header_seconds", "retry_after", "retry_hint"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def retry_after(error: BaseException) -> float | None:
    """The ``Retry-After`` of a pydantic-ai ``ModelHTTPError`` (429, 503), in seconds:
    pydantic-ai's own reading (``retry-after-ms`` too), else its ``Retry-After`` header in
    seconds or as an HTTP date; ``None`` for anything else, or a header that cannot be read."""
    http_error = loaded_class("pydantic_ai.exceptions", "ModelHTTPError")
    if http_error is None or not isinstance(error, http_error):
        return None
    parsed = getattr(error, "retry_after", None)
    if parsed is not None:
        return max(0.0, float(parsed))
    headers: Any = getattr(error, "headers", None)
    value = headers.get("retry-after") if headers else None
    return None if value is None else header_seconds("retry-after", value)


def retry_hint(error: BaseException) -> float | None:
    """Seconds ``error``'s response asked to wait, if it said: ``retry_after``, else its
    ``Retry-After`` / ``retry-after-ms`` (the longest), else the longest of OpenAI's
    ``x-ratelimit-reset-*`` and Anthropic's ``anthropic-ratelimit-*-reset`` headers (when
    a bucket is full again: often longer than the wait the provider asks for), read from
    ``error.headers`` or ``error.response.headers`` (a provider SDK's error)."""
    hinted = retry_after(error)
    if hinted is not None:
        return hinted
    headers = getattr(error, "headers", None)
    if headers is None:
        headers = getattr(getattr(error, "response", None), "headers", None)
    if not headers:
        return None
    try:
        items = list(headers.items())
    except (AttributeError, TypeError):
        return None
    asked: list[float] = []
    resets: list[float] = []
    for name, value in items:
        if isinstance(name, str) and isinstance(value, str):
            lower = name.lower()
            seconds = header_seconds(lower, value)
            if seconds is not None:
                (asked if lower.startswith("retry-after") else resets).append(seconds)
    waits = asked or resets
    return max(waits) if waits else None


def header_seconds(name: str, value: str) -> float | None:
    """Seconds a ``Retry-After`` or a provider's rate-limit reset header (``name`` in lower
    case) asks to wait; ``None`` when it cannot be read (or is not finite)."""
    if name in ("retry-after", "retry-after-ms"):
        try:
            seconds = float(value) / (1000.0 if name == "retry-after-ms" else 1.0)
        except ValueError:
            try:
                return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                return None
        return max(0.0, seconds) if math.isfinite(seconds) else None
    if name.startswith("x-ratelimit-reset"):  # OpenAI: "1s", "6m0s", "20ms"
        parts = _DURATION.findall(value.strip())
        if not parts:
            return None
        return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if name.startswith("anthropic-ratelimit-") and name.endswith("-reset"):  # RFC 3339
        try:
            from datetime import datetime

            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
        return max(0.0, when.timestamp() - time.time())
    return None
