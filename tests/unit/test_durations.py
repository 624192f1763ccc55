"""parse_duration / format_duration: the duration grammar of desired-state YAML."""

from __future__ import annotations

from datetime import timedelta

import pytest

from certgit.reconciler.durations import MAX_DURATION, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", timedelta(days=90)),
        ("720h", timedelta(hours=720)),
        ("30m", timedelta(minutes=30)),
        ("45s", timedelta(seconds=45)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("0d1s", timedelta(seconds=1)),
        ("100000h", timedelta(hours=100000)),
    ],
)
def test_valid_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "90",  # bare number: days or seconds?
        "-5d",
        "0d",
        "0h0m",
        "90 days",
        "90D",
        "1.5d",
        "12h1d",  # units out of order
        "1d1d",
        " 90d",
        "90d ",
        "1w",
        "\u0663d",  # Arabic-Indic digit three: only ASCII digits count
        "9999999999999d",
    ],
)
def test_invalid_durations_raise_with_examples(text: str) -> None:
    with pytest.raises(ValueError, match=r"90d|longer than 0s|36500d"):
        parse_duration(text)


@pytest.mark.parametrize(
    "text", ["36500d", "876000h", "52560000m", "3153600000s", "36499d23h59m60s"]
)
def test_a_hundred_years_is_accepted(text: str) -> None:
    assert parse_duration(text) == MAX_DURATION == timedelta(days=36500)


@pytest.mark.parametrize(
    "text",
    [
        "36500d1s",
        "36501d",
        "876001h",
        "52560001m",
        "3153600001s",
        "999999999d",
        "1" + "0" * 40 + "d",
    ],
)
def test_longer_than_a_hundred_years_is_refused_without_overflow(text: str) -> None:
    # 999999999d used to pass (it is timedelta.max) and overflow `now + duration` at apply
    with pytest.raises(ValueError, match=r"too long: a duration is at most 100 years \(36500d\)"):
        parse_duration(text)


@pytest.mark.parametrize("value", [90, 1.5, None, True])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(value)  # type: ignore[arg-type]


def test_message_names_the_text_and_the_forms() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("90 days")
    assert "'90 days'" in str(info.value)
    assert "720h" in str(info.value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(days=90), "90d"),
        (timedelta(days=1, hours=12), "1d12h"),
        (timedelta(seconds=3661), "1h1m1s"),
        (timedelta(0), "0s"),
        (timedelta(days=-2), "-2d"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


@pytest.mark.parametrize("text", ["90d", "1d12h", "45s", "2h30m"])
def test_round_trip(text: str) -> None:
    assert format_duration(parse_duration(text)) == text
