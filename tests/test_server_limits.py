"""batchrun/server_limits.py: every duration format, the headers as aiohttp and a plain dict
hand them over, garbage that must read as absent (never raise), and pause_s."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from batchrun.server_limits import (
    MAX_RESET_S,
    ServerLimits,
    parse_duration,
    read_server_limits,
)

# The example in OpenAI's rate-limit guide.
OPENAI = {
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-limit-tokens": "150000",
    "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-remaining-tokens": "149984",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-reset-tokens": "6m0s",
}
OPENAI_LIMITS = ServerLimits(
    remaining_requests=59,
    remaining_tokens=149984,
    reset_requests_s=1.0,
    reset_tokens_s=360.0,
    limit_requests=60,
    limit_tokens=150000,
)

# ---------------------------------------------------------------- parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("2h", 7200.0),
        ("1m30.5s", 90.5),
        ("17.062s", 17.062),
        ("1.5µs", 1.5e-6),  # Go writes the micro sign
        ("1.5μs", 1.5e-6),  # and some write the Greek mu
        ("3us", 3e-6),
        ("250ns", 250e-9),
        ("12", 12.0),  # plain seconds
        ("0.5", 0.5),
        (" 7s ", 7.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "s",
        "abc",
        "1x",
        "1 s",
        "1s2",  # a number without a unit after a part
        "1s garbage",
        "garbage 1s",
        "-1s",
        "+1s",
        "-5",
        ".5",
        "1.",
        "1e3",
        "inf",
        "nan",
        "infs",
        "١٢",  # digits, but not ASCII ones
        "Wed, 21 Oct 2015 07:28:00 GMT",  # an HTTP date: not read
        "1,5s",
    ],
)
def test_parse_duration_garbage_is_none(text: str) -> None:
    assert parse_duration(text) is None


def test_parse_duration_of_absurd_length_is_none_not_inf() -> None:
    assert parse_duration("9" * 400) is None  # float() says inf
    assert parse_duration("9" * 400 + "h") is None


@given(st.text())
def test_parse_duration_never_raises(text: str) -> None:
    seconds = parse_duration(text)
    assert seconds is None or 0.0 <= seconds < float("inf")


# ---------------------------------------------------------------- read_server_limits


def test_reads_openai_headers_from_a_plain_dict() -> None:
    assert read_server_limits(OPENAI) == OPENAI_LIMITS


def test_reads_headers_in_any_case_from_aiohttp() -> None:
    headers = CIMultiDict(
        {
            "X-RateLimit-" + name.removeprefix("x-ratelimit-").title(): v
            for name, v in OPENAI.items()
        }
    )
    assert "x-ratelimit-limit-requests" not in {k for k in headers}  # really another case
    assert read_server_limits(headers) == OPENAI_LIMITS


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"content-type": "application/json", "retry-after": "5"},
        {"ratelimit-remaining": "0", "ratelimit-reset": "30"},  # the IETF draft: not read
    ],
)
def test_none_without_such_headers(headers: dict[str, str]) -> None:
    assert read_server_limits(headers) is None


def test_none_when_every_value_is_garbage() -> None:
    assert read_server_limits({name: "n/a" for name in OPENAI}) is None


def test_some_headers_only() -> None:
    headers = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms"}
    assert read_server_limits(headers) == ServerLimits(remaining_tokens=0, reset_tokens_s=0.02)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("42", 42),
        (" 42 ", 42),
        ("0", 0),
        ("-1", None),
        ("4.5", None),
        ("lots", None),
        ("", None),
        ("1" * 5000, None),  # int() would refuse it with an error
        ("٤٢", None),
    ],
)
def test_counts(value: str, expected: int | None) -> None:
    limits = read_server_limits(
        {"x-ratelimit-remaining-requests": value, "x-ratelimit-limit-tokens": "1"}
    )
    assert limits is not None
    assert limits.remaining_requests == expected


def test_garbage_values_are_dropped_one_by_one() -> None:
    headers = dict(OPENAI)
    headers["x-ratelimit-remaining-requests"] = "many"
    headers["x-ratelimit-reset-tokens"] = "soon"
    limits = read_server_limits(headers)
    assert limits is not None
    assert (limits.remaining_requests, limits.reset_tokens_s) == (None, None)
    assert (limits.remaining_tokens, limits.reset_requests_s) == (149984, 1.0)


def test_a_reset_that_looks_like_an_epoch_is_dropped() -> None:
    limits = read_server_limits(
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1735689600"}
    )
    assert limits == ServerLimits(remaining_requests=0)
    ok = read_server_limits({"x-ratelimit-reset-requests": f"{MAX_RESET_S:.0f}"})
    assert ok == ServerLimits(reset_requests_s=MAX_RESET_S)


@given(st.dictionaries(st.sampled_from(sorted(OPENAI)), st.text()))
def test_read_server_limits_never_raises(headers: dict[str, str]) -> None:
    limits = read_server_limits(headers)
    if limits is not None:
        assert limits != ServerLimits()


# ---------------------------------------------------------------- pause_s


@pytest.mark.parametrize(
    ("limits", "pause"),
    [
        (OPENAI_LIMITS, None),  # nothing used up
        (ServerLimits(), None),
        (ServerLimits(remaining_requests=0, reset_requests_s=1.5), 1.5),
        (ServerLimits(remaining_tokens=0, reset_tokens_s=20.0), 20.0),
        (ServerLimits(remaining_requests=0, reset_requests_s=1.0, reset_tokens_s=30.0), 1.0),
        (
            ServerLimits(
                remaining_requests=0, remaining_tokens=0, reset_requests_s=1.0, reset_tokens_s=30.0
            ),
            30.0,  # both used up: the longer wait
        ),
        (ServerLimits(remaining_requests=0), None),  # used up, but no reset given
        (
            ServerLimits(remaining_requests=0, remaining_tokens=0, reset_tokens_s=4.0),
            4.0,  # the only reset given
        ),
        (ServerLimits(remaining_requests=1, reset_requests_s=9.0), None),
        (ServerLimits(remaining_requests=0, reset_requests_s=0.0), 0.0),
    ],
)
def test_pause_s(limits: ServerLimits, pause: float | None) -> None:
    assert limits.pause_s() == pause


def test_pause_s_from_headers() -> None:
    headers = dict(OPENAI)
    headers["x-ratelimit-remaining-tokens"] = "0"
    limits = read_server_limits(headers)
    assert limits is not None
    assert limits.pause_s() == 360.0
