"""The largest (and smallest) resources and timeout a task may ask for, stated once for the models and the CRD.

Each bound has one message. The models raise ``<field>: <value> is out of range: <message>``; the CRD
carries the same ``<message>`` on a CEL rule, so ``kubectl apply`` and ``expbuild-isolation run``
refuse the same values in the same words. The limits are what every executor can honour (a cgroup
quota, a Docker ``nano_cpus``, a Job's ``activeDeadlineSeconds``, the host reaper's timer); a worker
may set lower caps of its own (``[task_limits]`` in the worker file), checked when the task runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from .quantities import QuantityError, is_duration, parse_duration, parse_quantity

MAX_CPU = "1024"             # cores
MIN_CPU = "1m"
MAX_BYTES = "64Ti"           # memory and disk
MAX_PIDS = 4194304           # PID_MAX_LIMIT on 64-bit Linux: no pids limit can be larger
MAX_TIMEOUT = "7d"
MAX_TIMEOUT_SECONDS = 7 * 86400

_NUMBER = r"[0-9]+(\\.[0-9]+)?"
QUANTITY_PATTERN = r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]{1,9}))?$"
QUANTITY_MAX_LENGTH = 64


@dataclass(frozen=True)
class QuantityBound:
    """An int-or-string quantity that must be above ``low`` (or at least it) and at most ``high``."""

    low: str
    high: str
    message: str
    low_inclusive: bool = True

    def check(self, amount: Decimal) -> bool:
        low = parse_quantity(self.low)
        above = amount >= low if self.low_inclusive else amount > low
        return above and amount <= parse_quantity(self.high)

    def cel_rule(self) -> str:
        """The same bound for the API server (Kubernetes quantity library, 1.29+); a string that is not a
        quantity at all is left to the field's pattern, so it gets one error, not two."""
        low = parse_quantity(self.low)
        low_int = f">= {math.ceil(low)}" if self.low_inclusive else f"> {math.floor(low)}"   # whole cores/bytes
        low_cmp = ">= 0" if self.low_inclusive else "> 0"
        high_int = int(parse_quantity(self.high))
        return (f"type(self) == int ? (self {low_int} && self <= {high_int})"
                f" : (!isQuantity(self) || (quantity(self).compareTo(quantity('{self.low}')) {low_cmp}"
                f" && quantity(self).compareTo(quantity('{self.high}')) <= 0))")


def quantity_schema(description: str, bound: QuantityBound) -> dict[str, object]:
    """The CRD schema of an int-or-string quantity with ``bound``.

    Inside anyOf only the bare IntOrString pair is structural: a "minimum" beside the integer made every
    API server refuse the CRD (issue #12). Both branches are bounded by one CEL rule with the models' message.
    """
    return {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN, "maxLength": QUANTITY_MAX_LENGTH, "description": description,
            "x-kubernetes-validations": [{"rule": bound.cel_rule(), "message": bound.message}]}


CPU = QuantityBound(MIN_CPU, MAX_CPU, f"must be from {MIN_CPU} to {MAX_CPU} CPU cores")
MEMORY = QuantityBound("0", MAX_BYTES, f"must be more than 0 and at most {MAX_BYTES}", low_inclusive=False)
DISK = QuantityBound("0", MAX_BYTES, f"must be more than 0 and at most {MAX_BYTES}", low_inclusive=False)

TIMEOUT_MESSAGE = f"must be a duration more than 0 and at most {MAX_TIMEOUT} (e.g. \"90s\", \"10m\", \"1h30m\")"
# Units in the order a duration must list them (each at most once), with their length in seconds, and the
# regular expression that finds that unit's part without mistaking "ms" for minutes or "5s" in "5ms".
DURATION_UNITS = (("d", 86400.0, f"{_NUMBER}d"), ("h", 3600.0, f"{_NUMBER}h"),
                  ("m", 60.0, f"{_NUMBER}m($|[0-9])"), ("s", 1.0, f"(^|[a-z]){_NUMBER}s"),
                  ("ms", 0.001, f"{_NUMBER}ms"), ("us", 0.000001, f"{_NUMBER}us"),
                  ("ns", 0.000000001, f"{_NUMBER}ns"))


def timeout_cel_rule() -> str:
    """The timeout bound as CEL: a plain number is seconds; otherwise each unit's part is found on ``self``
    (whose size the API server knows from maxLength, so the estimated cost stays small) and summed in the
    order the model sums them. A duration is more than 0 exactly when it has a digit other than 0."""
    parts = " + ".join(f"(self.matches('{regex}') ? double(self.find('{regex}').find('{_NUMBER}')) * {seconds!r}"
                       f" : 0.0)" for _, seconds, regex in DURATION_UNITS)
    return (f"self.matches('[1-9]') && (self.matches('^[0-9]+$') ? (self.matches('^0*[0-9]{{1,7}}$') && "
            f"int(self) <= {MAX_TIMEOUT_SECONDS}) : {parts} <= {float(MAX_TIMEOUT_SECONDS)!r})")


def out_of_range(field: str, shown: str, message: str) -> ValueError:
    return ValueError(f"{field}: {shown} is out of range: {message}")


def check_timeout(value: str, field: str, shown: str) -> float:
    try:
        seconds = parse_duration(value)
    except QuantityError as exc:
        if is_duration(value):   # well formed, but zero
            raise out_of_range(field, shown, TIMEOUT_MESSAGE) from None
        raise ValueError(f"{field}: {exc}") from None
    if not 0 < seconds <= MAX_TIMEOUT_SECONDS:
        raise out_of_range(field, shown, TIMEOUT_MESSAGE)
    return seconds
