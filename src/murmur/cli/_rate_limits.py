"""``murmur worker start --rate-limit SPEC``: a provider's limits stated on the command line.

A SPEC is ``key=value`` pairs, comma-separated, of the ``RateLimit`` constructor's fields
that make sense from a command line::

    model=openai:gpt-4o,rpm=500,tpm=200000,store=redis://127.0.0.1:6379/0
    provider=anthropic,rpm=50

Spaces around the commas and equals signs are allowed. Several SPECs in
``MURMUR_RATE_LIMITS`` are separated by ``;``, newlines or spaces (``split_specs``)::

    MURMUR_RATE_LIMITS='model=openai:gpt-4o, rpm=500; provider=anthropic, rpm=50'

Each becomes one ``RateLimit``; a bad one is an ``InvalidValueError`` that names the option,
the SPEC, the key and what is accepted (the command prints it as one line, exit code 2).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InvalidTypeError, InvalidValueError

if TYPE_CHECKING:
    from ..middleware.rate_limit import RateLimit

__all__ = ["ENVVAR", "KEYS", "OPTION", "parse_rate_limit", "parse_rate_limits", "split_specs"]

OPTION = "--rate-limit"
#: Several SPECs, separated by ``;``, newlines or spaces (what the option would take,
#: repeated): see ``split_specs``.
ENVVAR = "MURMUR_RATE_LIMITS"
#: Keys that say which calls a limit applies to (at least one is needed).
SELECTORS = ("model", "provider", "agent")


class _Bad(InvalidValueError):
    """One key's value is not accepted (said with the option and the SPEC by the parser)."""


def _whole(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise _Bad(f"{key} must be a whole number >= 1 (e.g. {key}=500), got {value!r}")
    return number


def _seconds(key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise _Bad(f"{key} must be seconds > 0 (e.g. {key}=60), got {value!r}")
    return number


def _text(key: str, value: str) -> str:
    if not value:
        raise _Bad(f"{key} must not be empty")
    return value


def _store_failure(key: str, value: str) -> str:
    if value not in ("closed", "open"):
        raise _Bad(f"{key} must be closed or open, got {value!r}")
    return value


#: Each key, with how its value is read.
KEYS: dict[str, Callable[[str, str], Any]] = {
    "model": _text,
    "provider": _text,
    "agent": _text,
    "rpm": _whole,
    "tpm": _whole,
    "burst": _whole,
    "period": _seconds,
    "store": _text,
    "on_store_error": _store_failure,
    "store_timeout": _seconds,
    "name": _text,
}


def _store_secrets(spec: str) -> list[str]:
    """The passwords in ``spec``'s store URLs (``scheme://user:PASSWORD@host``), however
    malformed the rest of the URL, longest first."""
    found = re.findall(r"store\s*=[^,]*?:([^:@/,]+)@", spec)
    return sorted(set(found), key=len, reverse=True)


def parse_rate_limit(spec: str) -> RateLimit:
    """The ``RateLimit`` one ``--rate-limit`` SPEC describes.

    Raises:
        InvalidValueError: the SPEC is not ``key=value,...`` of the accepted keys, a value
            is not what its key takes, it names no calls or no rpm/tpm, or ``RateLimit``
            refuses the values.
    """
    from ..middleware.rate_limit import RateLimit

    secrets = _store_secrets(spec)

    def refuse(problem: str) -> InvalidValueError:
        message = f"{OPTION} {spec!r}: {problem}"
        for secret in secrets:  # the error goes to stderr and logs: not the password
            message = message.replace(secret, "***")
        return InvalidValueError(message)

    fields: dict[str, Any] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        key, equals, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not equals:
            raise refuse(f"{item!r} is not key=value (e.g. rpm=500)")
        if key not in KEYS:
            raise refuse(f"unknown key {key!r}; accepted: {', '.join(KEYS)}")
        if key in fields:
            raise refuse(f"{key} is given twice")
        try:
            fields[key] = KEYS[key](key, value.strip())
        except _Bad as exc:
            raise refuse(str(exc)) from None
    if not fields:
        raise refuse("empty; give key=value pairs, e.g. model=openai:gpt-4o,rpm=500")
    if not any(key in fields for key in SELECTORS):
        raise refuse(
            "says no calls it applies to: give model=, provider= or agent= "
            "(e.g. model=openai:gpt-4o or provider=anthropic)"
        )
    if "rpm" not in fields and "tpm" not in fields:
        raise refuse("needs rpm= (requests per period), tpm= (tokens per period) or both")
    try:
        return RateLimit(**fields)
    except (InvalidValueError, InvalidTypeError) as exc:
        raise refuse(str(exc).removeprefix("RateLimit ")) from None


def split_specs(value: str) -> list[str]:
    """The SPECs of ``MURMUR_RATE_LIMITS``: separated by ``;``, newlines or spaces, where
    spaces next to a ``,`` or ``=`` belong to the SPEC (``provider=openai, rpm=5`` is one
    SPEC, not two)."""
    joined = re.sub(r"\s*([,=])\s*", r"\1", value)
    return [spec for spec in re.split(r"[;\s]+", joined) if spec]


def parse_rate_limits(specs: Sequence[str]) -> list[RateLimit]:
    """One ``RateLimit`` per SPEC (see ``parse_rate_limit``); two of one name are refused
    (in a store they would be one limit)."""
    limits = [parse_rate_limit(spec) for spec in specs]
    names: set[str] = set()
    for limit in limits:
        if limit.name in names:
            raise InvalidValueError(
                f"{OPTION}: two limits are named {limit.name!r}; give each its own name="
            )
        names.add(limit.name)
    return limits
