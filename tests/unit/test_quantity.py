"""Kubernetes quantities: parsing exact values, cpu/memory units, and formatting."""

from __future__ import annotations

from fractions import Fraction

import pytest

from services.common.quantity import (
    QuantityError,
    format_cpu_millis,
    format_memory_bytes,
    parse_cpu_millis,
    parse_memory_bytes,
    parse_quantity,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", Fraction(0)),
        ("2", Fraction(2)),
        ("500m", Fraction(1, 2)),
        ("0.5", Fraction(1, 2)),
        (".5", Fraction(1, 2)),
        ("1.", Fraction(1)),
        ("+3k", Fraction(3000)),
        ("-1", Fraction(-1)),
        ("100u", Fraction(1, 10_000)),
        ("5n", Fraction(5, 10**9)),
        ("1M", Fraction(10**6)),
        ("1E", Fraction(10**18)),  # exa, not an exponent
        ("1Ki", Fraction(1024)),
        ("1Ei", Fraction(2**60)),
        ("129e6", Fraction(129_000_000)),
        ("12E3", Fraction(12_000)),
        ("1e-3", Fraction(1, 1000)),
        ("1.5Gi", Fraction(3 * 2**29)),
    ],
)
def test_parse_quantity(text: str, value: Fraction) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    "text",
    ["", " 1", "1 ", "abc", "Mi", "1e", "1KiB", "1 Mi", "--1", "1..2", ".", "1k1", "1ki", "0x10", "1e1000"],
)
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(QuantityError) as raised:
        parse_quantity(text)
    assert repr(text) in str(raised.value)


@pytest.mark.parametrize(
    ("text", "millis"),
    [("500m", 500), ("2", 2000), ("0.5", 500), ("1.25", 1250), ("0", 0), ("100u", 1), ("2500m", 2500)],
)
def test_parse_cpu_millis_rounds_up(text: str, millis: int) -> None:
    assert parse_cpu_millis(text) == millis


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64Mi", 64 * 2**20),
        ("1G", 10**9),
        ("128974848", 128_974_848),
        ("129e6", 129_000_000),
        ("123Ki", 123 * 1024),
        ("24Gi", 24 * 2**30),
        ("0.5Ki", 512),
        ("1500m", 2),  # a fraction of a byte rounds up
    ],
)
def test_parse_memory_bytes(text: str, size: int) -> None:
    assert parse_memory_bytes(text) == size


@pytest.mark.parametrize("parse", [parse_cpu_millis, parse_memory_bytes])
def test_negative_cpu_and_memory_are_rejected(parse) -> None:
    with pytest.raises(QuantityError, match="greater than or equal to 0"):
        parse("-1")


@pytest.mark.parametrize(("millis", "text"), [(0, "0"), (500, "500m"), (1000, "1"), (2000, "2"), (1500, "1500m")])
def test_format_cpu_millis(millis: int, text: str) -> None:
    assert format_cpu_millis(millis) == text
    assert parse_cpu_millis(text) == millis


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0"), (24 * 2**30, "24Gi"), (64 * 2**20, "64Mi"), (1024, "1Ki"), (1536, "1536"), (3072, "3Ki"),
     (10**9, "1G"), (1_500_000_000, "1500M"), (1001, "1001"), (2**60, "1Ei")],
)
def test_format_memory_bytes(size: int, text: str) -> None:
    assert format_memory_bytes(size) == text
    assert parse_memory_bytes(text) == size
