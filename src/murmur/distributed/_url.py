"""Broker URLs: which transport a URL names, checked at the boundary, passwords hidden."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import InvalidValueError

__all__ = ["SCHEMES", "BrokerURL", "parse_broker_url"]

#: Accepted schemes, and the adapter (and extra) each needs.
SCHEMES: dict[str, str] = {
    "redis": "redis",
    "rediss": "redis",
    "nats": "nats",
    "tls": "nats",
    "amqp": "rabbit",
    "amqps": "rabbit",
    "kafka": "kafka",
    "memory": "memory",
}

_ACCEPTED = (
    "redis://, rediss://, nats://, tls:// (NATS over TLS), amqp://, amqps://, kafka://, memory://"
)


@dataclass(frozen=True)
class BrokerURL:
    """A parsed broker URL. ``str()`` and ``repr()`` never show the password."""

    scheme: str
    #: Which adapter serves it: "redis", "nats", "rabbit", "kafka" or "memory".
    kind: str
    #: The URL as given (with its password): only ever handed to the broker client.
    secret: str = field(repr=False)
    #: The URL with any password replaced by ``***``.
    redacted: str
    #: ``host:port`` pairs (Kafka and NATS take several, comma-separated).
    hosts: tuple[str, ...]

    def __str__(self) -> str:
        return self.redacted

    def __repr__(self) -> str:
        return f"BrokerURL({self.redacted!r})"


def parse_broker_url(url: object) -> BrokerURL:
    """Check ``url`` names a broker Murmur can use.

    Raises:
        InvalidValueError: not a string, an unknown scheme, or malformed; the message names
            the accepted schemes (and never shows a password).
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidValueError(
            f"broker must be a URL string such as 'redis://localhost:6379' ({_ACCEPTED}), "
            f"got {type(url).__name__ if not isinstance(url, str) else 'an empty string'}"
        )
    scheme, sep, _rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep:
        raise InvalidValueError(
            f"broker {_redact_raw(url)!r} is not a URL (no scheme://); accepted: {_ACCEPTED}"
        )
    if scheme not in SCHEMES:
        raise InvalidValueError(
            f"broker URL scheme {scheme + '://'!r} is not supported; accepted: {_ACCEPTED}"
        )
    kind = SCHEMES[scheme]
    try:
        parts = urlsplit(url.strip())
        if "@" in parts.path + parts.query + parts.fragment:
            raise InvalidValueError(
                "an '@' after the host: a password holding '/', '?' or '#' must be "
                "percent-encoded (%2F, %3F, %23)"
            )
        netloc = parts.netloc
        userinfo, _, hostpart = netloc.rpartition("@")
        hosts = tuple(h for h in hostpart.split(",") if h)
        for host in hosts:
            _check_host(host)
    except ValueError as exc:
        raise InvalidValueError(
            f"broker URL {_redact_raw(url)!r} is malformed ({exc}); accepted: {_ACCEPTED}"
        ) from None
    if kind != "memory" and not hosts:
        raise InvalidValueError(
            f"broker URL {_redact_raw(url)!r} names no host (e.g. '{scheme}://localhost'); "
            f"accepted: {_ACCEPTED}"
        )
    redacted_netloc = netloc
    if userinfo:
        user, colon, _password = userinfo.partition(":")
        redacted_netloc = f"{user}{':***' if colon else ''}@{hostpart}"
    query = f"?{_redact_query(parts.query)}" if parts.query else ""
    redacted = f"{scheme}://{redacted_netloc}{parts.path}{query}"
    return BrokerURL(scheme, kind, url.strip(), redacted, hosts)


def _check_host(host: str) -> None:
    name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not name and port:  # no colon at all: rpartition put everything in port
        name, port = port, ""
    if not name:
        raise InvalidValueError(f"empty host in {host!r}")
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise InvalidValueError(f"port {port!r} is not a number from 1 to 65535")


#: Query parameters whose value is a credential (``redis://host?password=...``).
_SECRET_PARAMS = ("pass", "secret", "token")


def _redact_query(query: str) -> str:
    """``query`` with the values of credential-like parameters replaced by ``***``."""
    fields = []
    for field_ in query.split("&"):
        key, eq, _value = field_.partition("=")
        if eq and any(word in key.lower() for word in _SECRET_PARAMS):
            field_ = f"{key}=***"
        fields.append(field_)
    return "&".join(fields)


def query_secrets(url: BrokerURL) -> list[str]:
    """The credential values in the URL's query (hidden in ``redacted``)."""
    query = urlsplit(url.secret).query
    return [
        value
        for key, eq, value in (field_.partition("=") for field_ in query.split("&"))
        if eq and value and any(word in key.lower() for word in _SECRET_PARAMS)
    ]


def _redact_raw(url: str) -> str:
    """``url`` with whatever sits between ``://`` and its last ``@`` hidden (an unencoded
    ``/``, ``?`` or ``#`` in a password must not reveal the rest of it)."""
    head, sep, rest = url.partition("://")
    if not sep:
        return url if "@" not in url else "***@" + url.rpartition("@")[2]
    if "@" in rest:
        user = rest.partition("@")[0].partition(":")[0].partition("/")[0]
        rest = f"{user}:***@{rest.rpartition('@')[2]}"
    before, mark, query = rest.partition("?")
    return f"{head}{sep}{before}{mark}{_redact_query(query)}"
