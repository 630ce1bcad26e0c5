"""Durations, quantities and times as Kubernetes writes them, the same way everywhere.

The CRDs validate these strings at admission (with the same grammar, as CEL rules); the
operator and the agents parse them with these functions, so what the API server accepts is
exactly what the code understands. Times are written as Kubernetes' ``Time`` (seconds) and
``MicroTime`` (microseconds), always in UTC.
"""

from __future__ import annotations

import datetime
import re
from decimal import Decimal, InvalidOperation

__all__ = [
    "DURATION_PATTERN",
    "QUANTITY_PATTERN",
    "format_micro_time",
    "format_time",
    "parse_duration",
    "parse_quantity",
    "render_duration",
]

# Go's time.ParseDuration grammar restricted to the units a person writes in a manifest.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}

# Kubernetes resource.Quantity: a number with an optional binary or decimal suffix.
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"
_QUANTITY = re.compile(QUANTITY_PATTERN)
_QUANTITY_SUFFIXES = {
    "": 1,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30s``, ``1m30s`` or ``250ms``; ValueError otherwise."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: use a number with ms, s, m or h, e.g. 30s")
    total = sum(
        Decimal(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text)
    )
    return float(total)


def render_duration(seconds: float) -> str:
    """The shortest duration string for ``seconds`` that `parse_duration` reads back."""
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms"
    whole = millis // 1000
    if whole % 3600 == 0 and whole:
        return f"{whole // 3600}h"
    if whole % 60 == 0 and whole:
        return f"{whole // 60}m"
    return f"{whole}s"


def parse_quantity(value: int | str) -> int:
    """Bytes (or units) in a quantity such as ``64Mi``, ``1G`` or ``1048576``, rounded up."""
    if isinstance(value, bool):
        raise ValueError(f"invalid quantity {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid quantity {value!r}: must not be negative")
        return value
    match = _QUANTITY.fullmatch(value)
    if match is None:
        raise ValueError(f"invalid quantity {value!r}: use a number with Ki, Mi, Gi, k, M or G")
    suffix = match.group(2) or ""
    number = value[: len(value) - len(suffix)]
    try:
        amount = Decimal(number) * _QUANTITY_SUFFIXES[suffix]
    except InvalidOperation as error:  # pragma: no cover - the pattern admits only numbers
        raise ValueError(f"invalid quantity {value!r}") from error
    return int(amount.to_integral_value(rounding="ROUND_CEILING"))


def format_time(moment: datetime.datetime | None = None) -> str:
    """``moment`` (default: now) as a Kubernetes ``Time``: ``2026-01-02T03:04:05Z``."""
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(moment: datetime.datetime | None = None) -> str:
    """``moment`` (default: now) as a Kubernetes ``MicroTime``: ``…T03:04:05.123456Z``."""
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utc(moment: datetime.datetime | None) -> datetime.datetime:
    if moment is None:
        return datetime.datetime.now(datetime.UTC)
    if moment.tzinfo is None:
        raise ValueError("a time must be timezone-aware")
    return moment.astimezone(datetime.UTC)
