"""The Kubernetes CEL library functions the admission policy uses, for cel-python (the CRD tests' evaluator).

The API server adds these to standard CEL; cel-python has only the standard. Each is written from its
documentation, with the same results on the inputs we give it:

- quantity library: ``quantity(s)``, ``q.isGreaterThan(q)``, ``q.isLessThan(q)``, ``q.compareTo(q)``
  (https://kubernetes.io/docs/reference/using-api/cel/#kubernetes-quantity-library,
  https://pkg.go.dev/k8s.io/apiserver/pkg/cel/library#Quantity);
- IP and CIDR libraries: ``isIP``, ``ip``, ``isCIDR``, ``cidr``, ``c.containsIP(ip or string)``,
  ``c.prefixLength()``, ``c.ip()`` (https://pkg.go.dev/k8s.io/apiserver/pkg/cel/library#IP and #CIDR; a
  CIDR's ``ip()`` is the address as written);
- extended strings: ``s.replace(a, b)``, ``s.split(sep)``, ``s.substring(start, end)``, ``s.indexOf(sub)``,
  ``list.join(sep)`` (https://pkg.go.dev/github.com/google/cel-go/ext#Strings).

Errors (a bad quantity, a string that is no IP) raise, as they would make the API server's evaluation fail.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import celpy
from celpy import celtypes
from expbuild_isolation.api.quantities import parse_quantity


@dataclass(frozen=True)
class Quantity:
    amount: Fraction


@dataclass(frozen=True)
class Cidr:
    text: str

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.text, strict=False)


def _quantity(text: Any) -> Quantity:
    return Quantity(Fraction(parse_quantity(str(text))))


def _is_ip(text: Any) -> celtypes.BoolType:
    try:
        ipaddress.ip_address(str(text))
        return celtypes.BoolType(True)
    except ValueError:
        return celtypes.BoolType(False)


def _is_cidr(text: Any) -> celtypes.BoolType:
    if "/" not in str(text):
        return celtypes.BoolType(False)
    try:
        ipaddress.ip_network(str(text), strict=False)
        return celtypes.BoolType(True)
    except ValueError:
        return celtypes.BoolType(False)


def _ip(value: Any) -> Any:
    if isinstance(value, Cidr):  # cidr(...).ip()
        return ipaddress.ip_address(value.text.split("/")[0])
    return ipaddress.ip_address(str(value))


def _cidr(text: Any) -> Cidr:
    if not _is_cidr(text):
        raise ValueError(f"network address parse error during conversion from string: {text!r}")
    return Cidr(str(text))


def _contains_ip(cidr: Cidr, address: Any) -> celtypes.BoolType:
    address = address if isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else _ip(address)
    network = cidr.network
    return celtypes.BoolType(address.version == network.version and address in network)


def _compare(a: Quantity, b: Quantity) -> celtypes.IntType:
    return celtypes.IntType((a.amount > b.amount) - (a.amount < b.amount))


def _substring(text: Any, start: Any, end: Any = None) -> celtypes.StringType:
    text = str(text)
    return celtypes.StringType(text[int(start):] if end is None else text[int(start):int(end)])


FUNCTIONS: dict[str, Any] = {
    "quantity": _quantity,
    "isGreaterThan": lambda a, b: celtypes.BoolType(a.amount > b.amount),
    "isLessThan": lambda a, b: celtypes.BoolType(a.amount < b.amount),
    "compareTo": _compare,
    "isIP": _is_ip,
    "isCIDR": _is_cidr,
    "ip": _ip,
    "cidr": _cidr,
    "containsIP": _contains_ip,
    "prefixLength": lambda cidr: celtypes.IntType(cidr.network.prefixlen),
    "replace": lambda text, old, new: celtypes.StringType(str(text).replace(str(old), str(new))),
    "split": lambda text, sep: celtypes.ListType([celtypes.StringType(p) for p in str(text).split(str(sep))]),
    "substring": _substring,
    "indexOf": lambda text, sub: celtypes.IntType(str(text).find(str(sub))),
    "join": lambda items, sep="": celtypes.StringType(str(sep).join(str(i) for i in items)),
}


def program(environment: celpy.Environment, expression: str) -> Any:
    """A compiled expression that may call the functions above."""
    return environment.program(environment.compile(expression), functions=FUNCTIONS)
