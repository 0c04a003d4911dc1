"""Bandwidth limits in VBoxManage units (util.limits)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockyard.errors import ConfigError
from blockyard.util.limits import (
    MAX_LIMIT,
    check_rate,
    describe_limit,
    format_limit,
    parse_limit,
)

MiB = 1 << 20


@pytest.mark.parametrize("text,rate", [
    ("20", 20 * MiB),            # bare number: megabytes per second
    ("20M", 20 * MiB),           # binary, as VBoxManage's _1M
    ("512K", 512 << 10),
    ("1G", 1 << 30),
    ("8k", 1000),                # kilobits: 125 bytes each
    ("100m", 12_500_000),        # megabits
    ("1g", 125_000_000),         # gigabits
    ("0", 0),                    # unlimited
    ("0M", 0),
    (" 10M ", 10 * MiB),
    ("+5", 5 * MiB),
    (7, 7 * MiB),                # an int reads like a bare number
])
def test_parse(text: str | int, rate: int) -> None:
    assert parse_limit(text) == rate


@pytest.mark.parametrize("text", [
    "", "M", "ten", "1.5M", "20MB", "20 M", "20Mbps", "5T", "5Q", "0x10", "1e3", "--1",
])
def test_unparsable_is_one_line_config_error(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_limit(text)
    assert "\n" not in str(err.value)
    assert "examples" in str(err.value)


def test_negative_is_refused() -> None:
    with pytest.raises(ConfigError, match="negative"):
        parse_limit("-1M")
    with pytest.raises(ConfigError, match="negative"):
        check_rate(-1)


def test_absurd_is_refused() -> None:
    assert parse_limit("931G") < MAX_LIMIT  # 931 GiB/s is still below 1 TB/s
    with pytest.raises(ConfigError, match="absurd"):
        parse_limit("1000G")
    with pytest.raises(ConfigError, match="absurd"):
        parse_limit("99999999999999999999")
    with pytest.raises(ConfigError, match="absurd"):
        check_rate(MAX_LIMIT + 1)


def test_check_rate_wants_an_int() -> None:
    with pytest.raises(ConfigError):
        check_rate(1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        check_rate(True)


@given(st.integers(0, MAX_LIMIT))
def test_format_round_trips(rate: int) -> None:
    text = format_limit(rate)
    if not text.endswith("B/s"):
        assert parse_limit(text) == rate


def test_format_and_describe() -> None:
    assert format_limit(20 * MiB) == "20M"
    assert format_limit(12_500_000) == "100m"
    assert format_limit(1001) == "1001B/s"
    assert describe_limit(0) == "unlimited"
    assert describe_limit(10 * MiB) == "10 MiB/s (10M)"
