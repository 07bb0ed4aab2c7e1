"""Review: a password never shows, however oddly the broker URL is written."""

from __future__ import annotations

import pytest

from murmur import AgentRuntime, TaskSpec
from murmur.distributed._transport import BrokerTransport
from murmur.distributed._url import parse_broker_url
from murmur.distributed._worker import Worker
from murmur.errors import BrokerUnavailableError, InvalidValueError

SECRET = "s3cr"


async def shout(text: str) -> str:
    return text.upper()


@pytest.mark.parametrize(
    "url",
    [
        f"redis://user:{SECRET}/et@host:6379",  # an unencoded '/' in the password
        f"redis://user:1/{SECRET}@host",  # ... that would even parse as host 'user', port 1
        f"amqp://user:{SECRET}?et@host",
        f"amqp://user:{SECRET}#et@host:5672",
        f"redis://user:pw@host:0?password={SECRET}",  # malformed, password in the query
    ],
)
def test_a_malformed_url_is_refused_without_showing_the_password(url: str) -> None:
    with pytest.raises(InvalidValueError) as caught:
        parse_broker_url(url)
    assert SECRET not in str(caught.value)


def test_a_password_in_the_query_is_hidden() -> None:
    url = parse_broker_url(f"redis://host:6379/0?password={SECRET}&db=1")
    assert SECRET not in url.redacted
    assert SECRET not in repr(url)
    assert SECRET not in repr(BrokerTransport(url.secret))
    assert SECRET not in repr(Worker(url.secret, [shout]))
    assert "db=1" in url.redacted


@pytest.mark.anyio
async def test_a_connection_failure_never_shows_a_query_password() -> None:
    broker = BrokerTransport(f"redis://127.0.0.1:1?password={SECRET}", connect_timeout=1)
    async with AgentRuntime(transport=broker) as runtime:
        result = await runtime.run(shout, TaskSpec(input="a"))
    assert isinstance(result.error, BrokerUnavailableError)
    assert SECRET not in str(result.error)
