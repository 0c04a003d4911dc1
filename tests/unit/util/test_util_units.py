import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockyard.errors import ConfigError
from blockyard.util.units import format_size, parse_size


@pytest.mark.parametrize("text,value", [
    ("4096", 4096), ("512M", 512 << 20), ("10G", 10 << 30), ("1.5T", 3 << 39),
    ("1k", 1024), ("2GiB", 2 << 30), (" 7 ", 7), ("0", 0),
])
def test_parse(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "G", "-1", "1.3", "ten", "5Q", "1.5.5G"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)


@given(st.integers(0, 1 << 60))
def test_format_round_trips_when_exact(n: int) -> None:
    text = format_size(n)
    if "." not in text:
        assert parse_size(text) == n
