"""Kubernetes quantities ("500m", "2Gi") and Go-style durations ("90s", "1h30m").

Parsed once, at the edge, and carried as numbers everywhere else.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

from .messages import shown as _shown

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
            "P": Decimal(10**15), "E": Decimal(10**18)}
_QUANTITY = re.compile(r"^([+-]?[0-9]+(?:\.[0-9]*)?|[+-]?\.[0-9]+)([eE][+-]?[0-9]{1,9}|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$")
# Far beyond any real limit: a larger exponent is clamped to it, so "1e999999999" compares as larger
# than every bound without any arithmetic on a billion-digit number.
_MAX_EXPONENT = 1000
_MAX_INT64 = 2**63 - 1
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
        raise QuantityError(f"{_shown(value)} is not a Kubernetes quantity{_hint(text)}")
    number, suffix = match.groups()
    try:
        base = Decimal(number)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise QuantityError(f"{value!r} is not a Kubernetes quantity") from exc
    if suffix in _BINARY:
        return base * _BINARY[suffix]
    if suffix[:1] in "eE" and suffix:
        exponent = max(-_MAX_EXPONENT - 1, min(int(suffix[1:]), _MAX_EXPONENT + 1))
        return base.scaleb(exponent)
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
        raise QuantityError(f"{_shown(value)} is negative; a size must be 0 or more")
    if amount > _MAX_INT64:
        raise QuantityError(f"{_shown(value)} is larger than any size a kernel can hold (2^63-1 bytes)")
    return int(amount.to_integral_value(rounding="ROUND_CEILING"))


def parse_cpu(value: str | int | float) -> float:
    """CPU cores from a quantity: "500m" -> 0.5, "2" -> 2.0. At least 1m."""
    amount = parse_quantity(value)
    if amount <= 0:
        raise QuantityError(f"{_shown(value)} is not a positive number of CPUs (examples: \"500m\", \"2\")")
    if amount < Decimal("0.001"):
        raise QuantityError(f"{_shown(value)} is below the smallest CPU amount, 1m")
    return float(amount)


# The parts of a duration, each at most once and in this order (as Go prints a duration, plus days):
# "1d12h", "1h30m", "90s", "250ms"; a plain number is seconds. One order keeps the CRD's CEL rule,
# which finds each unit's part on its own, exact (see ``api.bounds.timeout_cel_rule``).
_DURATION_UNITS = (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001), ("us", 0.000001),
                   ("ns", 0.000000001))
_DURATION = re.compile("^" + "".join(rf"(?:(?P<{u}>[0-9]+(?:\.[0-9]+)?){u})?" for u, _ in _DURATION_UNITS) + "$")
# the same grammar for the CRD (Go's RE2 has no named groups): a plain number, or the units in order
DURATION_PATTERN = r"^[0-9]+$|^" + "".join(rf"([0-9]+(\.[0-9]+)?{u})?" for u, _ in _DURATION_UNITS) + "$"


def is_duration(text: str) -> bool:
    """Whether ``text`` is written as a duration (whatever its value)."""
    return bool(text) and (re.fullmatch(r"[0-9]+(\.[0-9]+)?", text) is not None or _DURATION.match(text) is not None)


def parse_duration(value: str | int | float) -> float:
    """Seconds from a duration: "90s", "10m", "1h30m", "250ms", "2d", or a plain number of seconds."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip()
        match = _DURATION.match(text)
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
            seconds = float(text)
        elif text and match:
            seconds = 0.0
            for unit, length in _DURATION_UNITS:   # summed in this order, as the CRD's rule sums them
                if match.group(unit) is not None:
                    seconds += float(match.group(unit)) * length
        else:
            raise QuantityError(f"{_shown(value)} is not a duration (examples: \"90s\", \"10m\", \"1h30m\", "
                                f"\"250ms\"; units d h m s ms us ns, each once, largest first)")
    if not math.isfinite(seconds) or seconds <= 0:
        raise QuantityError(f"{_shown(value)} is not a positive duration")
    return seconds


def format_bytes(amount: int) -> str:
    """The shortest exact binary quantity for a byte count: 2147483648 -> "2Gi"."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _BINARY[suffix]
        if amount >= unit and amount % unit == 0:
            return f"{amount // unit}{suffix}"
    return str(amount)
