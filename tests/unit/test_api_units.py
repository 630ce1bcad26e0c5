"""Durations and quantities parse as Kubernetes writes them, and nothing else parses."""

from __future__ import annotations

import pytest

from wasmfleet_api.units import parse_duration, parse_quantity, render_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("1m30s", 90.0), ("250ms", 0.25), ("1h", 3600.0), ("1.5s", 1.5)],
)
def test_a_duration_parses_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5 s", "-1s", "1d", "s", "1.s", "1sm"])
def test_a_malformed_duration_is_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 30s"):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0.25, 1.0, 30.0, 60.0, 90.0, 3600.0, 5400.0])
def test_a_rendered_duration_parses_back_to_the_same_seconds(seconds: float) -> None:
    assert parse_duration(render_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "amount"),
    [
        ("64Mi", 64 * 1024**2),
        ("1Gi", 1024**3),
        ("1k", 1000),
        ("1.5Ki", 1536),
        ("0.5", 1),
        (1048576, 1048576),
        ("4096", 4096),
    ],
)
def test_a_quantity_parses_to_whole_units(value: int | str, amount: int) -> None:
    assert parse_quantity(value) == amount


@pytest.mark.parametrize("value", ["", "Mi", "64MB", "-1", "1e3", "lots", -5])
def test_a_malformed_quantity_is_refused(value: int | str) -> None:
    with pytest.raises(ValueError, match="invalid quantity"):
        parse_quantity(value)
