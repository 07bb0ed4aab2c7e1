"""The retry rules judge a failure from another process as they would the original."""

from __future__ import annotations

import pytest
from pydantic_ai.exceptions import ModelHTTPError

from murmur import InputValidationError, RemoteAgentError
from murmur.middleware.retry import _as_predicate, is_retryable
from support import crossed


class QuotaError(ConnectionError):
    """A user's own transient error class."""


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (ConnectionError("reset"), True),
        (TimeoutError("slow"), True),
        (QuotaError("over"), True),
        (ModelHTTPError(429, "m"), True),
        (ModelHTTPError(503, "m"), True),
        (ModelHTTPError(400, "m"), False),
        (ValueError("bug"), False),
        (InputValidationError("agent", [{"loc": ("x",), "msg": "bad"}]), False),
    ],
)
def test_the_default_rule_judges_a_remote_failure_as_the_original(
    error: Exception, retried: bool
) -> None:
    remote = crossed(error)
    assert is_retryable(remote) is is_retryable(error) is retried


def test_a_remote_failure_keeps_its_classes_and_status() -> None:
    remote = crossed(QuotaError("over"))
    assert isinstance(remote, RemoteAgentError)
    assert remote.kinds[:3] == (
        f"{__name__}.QuotaError",
        "builtins.ConnectionError",
        "builtins.OSError",
    )
    assert remote.is_a(ConnectionError)
    assert not remote.is_a(ValueError)
    http = crossed(ModelHTTPError(429, "m"))
    assert isinstance(http, RemoteAgentError)
    assert http.status_code == 429


def test_retry_on_types_match_a_remote_failure_by_its_classes() -> None:
    matches = _as_predicate((ConnectionError,))
    assert matches(crossed(QuotaError("over")))
    assert not matches(crossed(ValueError("bug")))
