"""Kubernetes quantities ("500m", "2Gi") and Go-style durations ("90s", "1h30m").

Parsed once, at the edge, and carried as numbers everywhere else.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
            "P": Decimal(10**15), "E": Decimal(10**18)}
_QUANTITY = re.compile(r"^([+-]?[0-9]+(?:\.[0-9]*)?|[+-]?\.[0-9]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$")
_LOOKALIKES = {"KB": "Ki", "K": "k", "MB": "Mi", "GB": "Gi", "TB": "Ti", "KiB": "Ki", "MiB": "Mi",
               "GiB": "Gi", "TiB": "Ti", "kb": "Ki", "mb": "Mi", "gb": "Gi", "g": "Gi", "mi": "Mi", "gi": "Gi"}


class QuantityError(ValueError):
    """A value that is not a Kubernetes quantity or duration; the message says what would be."""


def parse_quantity(value: str | int | float) -> Decimal:
    """The exact value of a Kubernetes quantity, e.g. "2Gi" -> 2147483648, "500m" -> 0.5."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a Kubernetes quantity")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise QuantityError(f"{value!r} is not a Kubernetes quantity")
        return Decimal(str(value))
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if not match:
        raise QuantityError(f"{value!r} is not a Kubernetes quantity{_hint(text)}")
    number, suffix = match.groups()
    try:
        base = Decimal(number)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise QuantityError(f"{value!r} is not a Kubernetes quantity") from exc
    if suffix in _BINARY:
        return base * _BINARY[suffix]
    if suffix[:1] in "eE" and suffix:
        return base * (Decimal(10) ** int(suffix[1:]))
    return base * _DECIMAL[suffix]


def _hint(text: str) -> str:
    match = re.match(r"^([0-9.]+)\s*([A-Za-z]+)$", text)
    if match and match.group(2) in _LOOKALIKES:
        return f' (did you mean "{match.group(1)}{_LOOKALIKES[match.group(2)]}"?)'
    return ' (examples: "512Mi", "2Gi", "500m", "2")'


def parse_bytes(value: str | int | float) -> int:
    """A byte count from a quantity; fractions of a byte round up, negatives are refused."""
    amount = parse_quantity(value)
    if amount < 0:
        raise QuantityError(f"{value!r} is negative; a size must be 0 or more")
    return int(amount.to_integral_value(rounding="ROUND_CEILING"))


def parse_cpu(value: str | int | float) -> float:
    """CPU cores from a quantity: "500m" -> 0.5, "2" -> 2.0. At least 1m."""
    amount = parse_quantity(value)
    if amount <= 0:
        raise QuantityError(f"{value!r} is not a positive number of CPUs (examples: \"500m\", \"2\")")
    if amount < Decimal("0.001"):
        raise QuantityError(f"{value!r} is below the smallest CPU amount, 1m")
    return float(amount)


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h|d)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | int | float) -> float:
    """Seconds from a duration: "90s", "10m", "1h30m", "250ms", or a plain number of seconds."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip()
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
            seconds = float(text)
        else:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise QuantityError(
                    f"{value!r} is not a duration (examples: \"90s\", \"10m\", \"1h30m\", \"250ms\")")
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise QuantityError(f"{value!r} is not a positive duration")
    return seconds


def format_bytes(amount: int) -> str:
    """The shortest exact binary quantity for a byte count: 2147483648 -> "2Gi"."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _BINARY[suffix]
        if amount >= unit and amount % unit == 0:
            return f"{amount // unit}{suffix}"
    return str(amount)
