"""``murmur worker start --rate-limit SPEC``: each SPEC read into a ``RateLimit``, and every
way one can be wrong named in one line (exit code 2)."""

from __future__ import annotations

import pytest

from murmur import InvalidValueError, RateLimit
from murmur.cli._rate_limits import parse_rate_limit, parse_rate_limits, split_specs
from test_cli_worker import APP, one_line_error, run_command
from workers import command_env


def test_a_spec_sets_the_fields_it_names() -> None:
    limit = parse_rate_limit(
        "model=openai:gpt-4o, rpm=500,tpm=200_000,burst=5,period=30,"
        "store=redis://127.0.0.1:6379/0,on_store_error=open,store-timeout=0.5,name=gpt"
    )
    assert isinstance(limit, RateLimit)
    assert (limit.model, limit.provider, limit.agent) == ("openai:gpt-4o", None, None)
    assert (limit.rpm, limit.tpm, limit.burst, limit.period) == (500, 200_000, 5, 30.0)
    assert (limit.store, limit.on_store_error, limit.store_timeout) == (
        "redis://127.0.0.1:6379/0",
        "open",
        0.5,
    )
    assert limit.name == "gpt"


def test_the_defaults_are_the_constructors() -> None:
    limit = parse_rate_limit("provider=anthropic,rpm=50")
    expected = RateLimit(provider="anthropic", rpm=50)
    assert limit.name == expected.name == "provider=anthropic:rpm=50"
    assert (limit.tpm, limit.burst, limit.period, limit.store) == (None, 1, 60.0, None)
    assert (limit.on_store_error, limit.store_timeout) == ("closed", 2.0)


def test_several_specs_make_several_limits() -> None:
    limits = parse_rate_limits(["agent=researcher,tpm=1000", "provider=openai,rpm=10"])
    assert [limit.name for limit in limits] == [
        "agent=researcher:tpm=1000",
        "provider=openai:rpm=10",
    ]
    assert parse_rate_limits([]) == []


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", "empty; give key=value pairs, e.g. model=openai:gpt-4o,rpm=500"),
        (" , ", "empty"),
        ("model=m,rpm", "'rpm' is not key=value (e.g. rpm=500)"),
        (
            "model=m,rpmm=5",
            "unknown key 'rpmm'; accepted: model, provider, agent, rpm, tpm, burst, period, "
            "store, on_store_error, store_timeout, name",
        ),
        ("model=m,rpm=5,rpm=6", "rpm is given twice"),
        ("model=m,rpm=many", "rpm must be a whole number >= 1 (e.g. rpm=500), got 'many'"),
        ("model=m,rpm=2.5", "rpm must be a whole number >= 1 (e.g. rpm=500), got '2.5'"),
        ("model=m,tpm=0", "tpm must be a whole number >= 1 (e.g. tpm=500), got '0'"),
        ("model=m,rpm=5,burst=-1", "burst must be a whole number >= 1"),
        ("model=m,rpm=5,period=soon", "period must be seconds > 0 (e.g. period=60), got 'soon'"),
        ("model=m,rpm=5,period=0", "period must be seconds > 0"),
        ("model=m,rpm=5,period=inf", "period must be seconds > 0"),
        ("model=m,rpm=5,store_timeout=-1", "store_timeout must be seconds > 0"),
        ("model=m,rpm=5,on_store_error=maybe", "on_store_error must be closed or open"),
        ("model=,rpm=5", "model must not be empty"),
        (
            "rpm=500",
            "says no calls it applies to: give model=, provider= or agent= "
            "(e.g. model=openai:gpt-4o or provider=anthropic)",
        ),
        (
            "model=openai:gpt-4o,burst=2",
            "needs rpm= (requests per period), tpm= (tokens per period) or both",
        ),
        ("model=m,rpm=5,burst=6", "burst=6 is more than rpm=5"),
        (
            "model=m,rpm=5,store=localhost:6379",
            "store must be None or a redis:// or rediss:// URL, got 'localhost:6379'",
        ),
    ],
)
def test_a_bad_spec_names_the_option_the_key_and_what_is_accepted(spec: str, expected: str) -> None:
    with pytest.raises(InvalidValueError) as caught:
        parse_rate_limit(spec)
    message = str(caught.value)
    assert message.startswith(f"--rate-limit {spec!r}: "), message
    assert expected in message


def test_two_limits_of_one_name_are_refused() -> None:
    with pytest.raises(InvalidValueError, match="two limits are named 'x'; give each its own"):
        parse_rate_limits(["model=a,rpm=5,name=x", "model=b,rpm=5,name=x"])


# -- through the command ------------------------------------------------------------------


def test_a_bad_rate_limit_is_a_one_line_usage_error() -> None:
    line = one_line_error(
        run_command("--app", APP, "--broker", "redis://127.0.0.1:1", "--rate-limit", "rpm=5"),
        2,
    )
    assert "--rate-limit 'rpm=5': says no calls it applies to" in line


def test_the_rate_limits_may_come_from_the_environment() -> None:
    env = command_env(MURMUR_RATE_LIMITS="provider=openai,rpm=5 model=m,rpm=lots")
    line = one_line_error(run_command("--app", APP, "--broker", "redis://127.0.0.1:1", env=env), 2)
    assert "--rate-limit 'model=m,rpm=lots': rpm must be a whole number >= 1" in line


@pytest.mark.parametrize(
    "value",
    [
        "provider=openai,rpm=5 model=m,rpm=lots",
        "provider=openai, rpm=5; model=m, rpm=lots",
        "provider = openai , rpm = 5\nmodel=m,rpm=lots;",
    ],
)
def test_the_environment_s_specs_are_split_on_semicolons_newlines_or_spaces(value: str) -> None:
    """Spaces next to a comma or an equals sign belong to the SPEC: "provider=openai,
    rpm=5" is one limit, not "provider=openai," and "rpm=5" with a misleading error."""
    assert split_specs(value) == ["provider=openai,rpm=5", "model=m,rpm=lots"]


def test_a_spec_with_spaces_after_its_commas_comes_from_the_environment() -> None:
    env = command_env(MURMUR_RATE_LIMITS="provider=openai, rpm=5; model=m, rpm=lots")
    line = one_line_error(run_command("--app", APP, "--broker", "redis://127.0.0.1:1", env=env), 2)
    assert "--rate-limit 'model=m,rpm=lots': rpm must be a whole number >= 1" in line
