"""The API server's estimated cost of each CEL rule in a CRD, checked against its documented limits.

Source: "Resource use by validation functions" in "Extend the Kubernetes API with
CustomResourceDefinitions" (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/
custom-resource-definitions/#resource-use-by-validation-functions): a rule whose worst case,
times the number of times it can run (the product of the maxItems above it), exceeds the per-rule
limit is refused when the CRD is written, and so is a CRD whose rules add up past the per-CRD limit;
without maxLength/maxItems the estimate assumes strings and lists as large as a whole request.

The numbers follow the API server's implementation of that rule (cel-go's ``checker/cost.go``, the
Kubernetes CEL library's ``cost.go`` and the CRD size estimator): the limits
``StaticEstimatedCostLimit`` = 10,000,000 and ``StaticEstimatedCRDCostLimit`` = 100,000,000, a request
of at most 3 MiB, a string of maxLength n counted as 4n bytes, a select or identifier costing 1, a
string traversal 0.1 per byte and a regular expression 0.25 per pattern character. Only the
functions our rules use are priced; any other is refused, so a new rule is never waved through
unestimated. Parsing uses cel-python (the ``test`` extra).
"""

from __future__ import annotations

import codecs
import math
from dataclasses import dataclass
from typing import Any

import celpy
from lark import Token, Tree

PER_RULE_LIMIT = 10_000_000          # StaticEstimatedCostLimit
PER_CRD_LIMIT = 100_000_000          # StaticEstimatedCRDCostLimit
MAX_REQUEST_BYTES = 3 * 1024 * 1024  # the API server's default request size limit
UNKNOWN = 2**64 - 1                  # cel-go's "unknown" size: any cost that depends on it saturates
STRING_TRAVERSAL = 0.1
REGEX_LENGTH = 0.25
LIST_CREATE, MAP_CREATE = 10, 30


def _add(*values: int) -> int:
    return min(UNKNOWN, sum(values))


def _mul(a: int, b: int) -> int:
    return min(UNKNOWN, a * b)


def _factor(size: int, factor: float) -> int:
    return UNKNOWN if size >= UNKNOWN else math.ceil(size * factor)


# -- sizes the API server assumes for schema nodes --------------------------------------------------------


def max_size(schema: dict[str, Any]) -> int:
    """The largest size() a value of ``schema`` can have, as the API server's estimator assumes it."""
    if schema.get("x-kubernetes-int-or-string"):
        return schema["maxLength"] * 4 if "maxLength" in schema else MAX_REQUEST_BYTES - 2
    kind = schema.get("type")
    if kind == "string":
        if "maxLength" in schema:
            return schema["maxLength"] * 4
        if schema.get("enum"):
            return max(len(str(v)) for v in schema["enum"])
        return MAX_REQUEST_BYTES - 2
    if kind == "array":
        if "maxItems" in schema:
            return schema["maxItems"]
        return (MAX_REQUEST_BYTES - 2) // (min_serialized_size(schema.get("items") or {}) + 1)
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        if "maxProperties" in schema:
            return schema["maxProperties"]
        return (MAX_REQUEST_BYTES - 2) // (min_serialized_size(schema["additionalProperties"]) + 6)
    if kind == "object":
        return 0   # an object's own size is not estimated (DeclType.MaxElements stays 0)
    return 1       # int, double, bool: scalars


def min_serialized_size(schema: dict[str, Any]) -> int:
    """The shortest JSON a value of ``schema`` can take ("" for a string, {} for an object ...)."""
    if schema.get("x-kubernetes-int-or-string"):
        return 1
    kind = schema.get("type")
    if kind == "string":
        return 2
    if kind in ("array",) or (kind == "object" and "additionalProperties" in schema):
        return 2
    if kind == "object":
        required = set(schema.get("required") or [])
        return 2 + sum(len(name) + min_serialized_size(sub) + 4 for name, sub in (schema.get("properties") or {}).items()
                       if name in required and "default" not in sub)
    if kind == "boolean":
        return 4
    return 1


# -- one rule ---------------------------------------------------------------------------------------------


@dataclass
class Value:
    """An estimated sub-expression: its worst-case cost, size, and the schema it points into (if any)."""

    cost: int
    size: int = UNKNOWN
    schema: dict[str, Any] | None = None
    kind: str = "dyn"   # string, list, object, scalar, dyn


def _of_schema(schema: dict[str, Any], cost: int) -> Value:
    kind = {"string": "string", "array": "list", "object": "object"}.get(schema.get("type", ""), "scalar")
    if schema.get("x-kubernetes-int-or-string"):
        kind = "dyn"
    return Value(cost, max_size(schema), schema, kind)


class UnknownFunction(ValueError):
    """A rule calls something this estimator does not price."""


class Estimator:
    def __init__(self, schema: dict[str, Any]) -> None:
        self.scope: dict[str, Value] = {"self": _of_schema(schema, 1), "oldSelf": _of_schema(schema, 1)}

    def estimate(self, tree: Tree) -> Value:
        method = getattr(self, f"_{tree.data}", None)
        if method is None:
            raise UnknownFunction(f"cannot estimate the CEL construct {tree.data!r}")
        return method(tree)

    # structure: a one-child node is a pass-through
    def _pass(self, tree: Tree) -> Value:
        if len(tree.children) == 1 and isinstance(tree.children[0], Tree):
            return self.estimate(tree.children[0])
        raise UnknownFunction(f"cannot estimate {tree.data!r} with {len(tree.children)} parts")

    _member = _primary = _paren_expr = _pass

    def _expr(self, tree: Tree) -> Value:
        parts = [c for c in tree.children if isinstance(c, Tree)]
        if len(parts) == 1:
            return self.estimate(parts[0])
        cond, yes, no = (self.estimate(p) for p in parts)   # cost: condition + the dearer branch
        return Value(_add(cond.cost, max(yes.cost, no.cost)), max(yes.size, no.size), None, "dyn")

    def _conditionalor(self, tree: Tree) -> Value:
        if len(tree.children) == 1:
            return self.estimate(tree.children[0])
        parts = [self.estimate(c) for c in tree.children if isinstance(c, Tree)]
        return Value(_add(*(p.cost for p in parts)), 1, None, "scalar")

    _conditionaland = _conditionalor

    def _relation(self, tree: Tree) -> Value:
        if len(tree.children) == 1:
            return self.estimate(tree.children[0])
        operator, right = tree.children
        left = self.estimate(operator.children[0])
        rhs = self.estimate(right)
        if operator.data == "relation_in":
            return Value(_add(rhs.size if rhs.kind == "list" else 1, left.cost, rhs.cost), 1, None, "scalar")
        if operator.data in ("relation_eq", "relation_ne") or "string" in (left.kind, rhs.kind):
            smallest = min(left.size, rhs.size)   # equality (and string order) walks the shorter operand
            return Value(_add(_factor(smallest, STRING_TRAVERSAL), left.cost, rhs.cost), 1, None, "scalar")
        return Value(_add(1, left.cost, rhs.cost), 1, None, "scalar")

    def _arithmetic(self, tree: Tree) -> Value:
        if len(tree.children) == 1:
            return self.estimate(tree.children[0])
        operator, right = tree.children
        left, rhs = self.estimate(operator.children[0]), self.estimate(right)
        if "string" in (left.kind, rhs.kind):
            size = _add(left.size, rhs.size)
            return Value(_add(_factor(size, STRING_TRAVERSAL), left.cost, rhs.cost), size, None, "string")
        if "list" in (left.kind, rhs.kind):
            return Value(_add(1, left.cost, rhs.cost), _add(left.size, rhs.size), None, "list")
        return Value(_add(1, left.cost, rhs.cost), 1, None, "scalar")

    _addition = _multiplication = _arithmetic

    def _unary(self, tree: Tree) -> Value:
        if len(tree.children) == 1:
            return self.estimate(tree.children[0])
        inner = self.estimate(tree.children[1])
        return Value(_add(1, inner.cost), 1, None, "scalar")

    def _literal(self, tree: Tree) -> Value:
        token: Token = tree.children[0]
        if token.type in ("STRING_LIT", "MLSTRING_LIT"):
            return Value(0, len(_string_literal(token)), None, "string")
        return Value(0, 1, None, "scalar")

    def _ident(self, tree: Tree) -> Value:
        name = str(tree.children[0])
        if name in self.scope:
            found = self.scope[name]
            return Value(1, found.size, found.schema, found.kind)
        if name in ("int", "uint", "double", "string", "bool", "bytes", "list", "map", "null_type", "type"):
            return Value(1, 1, None, "scalar")   # a type name, e.g. type(self) == int
        raise UnknownFunction(f"unknown identifier {name!r}")

    def _list_lit(self, tree: Tree) -> Value:
        items = [self.estimate(c) for c in _args(tree)]
        return Value(_add(LIST_CREATE, *(i.cost for i in items)), len(items), None, "list")

    def _map_lit(self, tree: Tree) -> Value:
        items = [self.estimate(c) for c in _args(tree)]
        return Value(_add(MAP_CREATE, *(i.cost for i in items)), len(items) // 2, None, "dyn")

    def _member_dot(self, tree: Tree) -> Value:
        target = self.estimate(tree.children[0])
        name = str(tree.children[1])
        schema = ((target.schema or {}).get("properties") or {}).get(name)
        cost = _add(target.cost, 1 if target.kind in ("object", "dyn") else 0)
        return _of_schema(schema, cost) if schema is not None else Value(cost)

    def _member_index(self, tree: Tree) -> Value:
        target, index = self.estimate(tree.children[0]), self.estimate(tree.children[1])
        items = (target.schema or {}).get("items") or (target.schema or {}).get("additionalProperties")
        cost = _add(1, target.cost, index.cost)
        return _of_schema(items, cost) if isinstance(items, dict) else Value(cost)

    def _ident_arg(self, tree: Tree) -> Value:
        name = str(tree.children[0])
        args = _args(tree)
        if name == "has":   # a presence test: the select costs 1, the field is not read
            select = args[0]
            inner = _unwrap(select)
            if inner.data != "member_dot":
                raise UnknownFunction("has() needs a field selection")
            return Value(_add(1, self.estimate(inner.children[0]).cost), 1, None, "scalar")
        values = [self.estimate(a) for a in args]
        return _global_call(name, values)

    def _member_dot_arg(self, tree: Tree) -> Value:
        name = str(tree.children[1])
        args = _args(tree)
        target = self.estimate(tree.children[0])
        if name in MACROS:
            return self._macro(name, target, args)
        values = [self.estimate(a) for a in args]
        return _member_call(name, target, values)

    def _macro(self, name: str, target: Value, args: list[Tree]) -> Value:
        """all/exists/exists_one/map/filter, costed as cel-go costs their expansion into a comprehension."""
        variable = str(_unwrap(args[0]).children[0])
        items = (target.schema or {}).get("items")
        element = _of_schema(items, 1) if isinstance(items, dict) else Value(1)
        saved = self.scope.get(variable)
        self.scope[variable] = element
        try:
            bodies = [self.estimate(a) for a in args[1:]]
        finally:
            if saved is None:
                self.scope.pop(variable)
            else:
                self.scope[variable] = saved
        body = _add(*(b.cost for b in bodies))
        init, step, result = MACROS[name]
        per_item = _add(step, body)
        size = target.size if name in ("map", "filter") else 1
        kind = "list" if name in ("map", "filter") else "scalar"
        return Value(_add(target.cost, init, _mul(target.size, per_item), result), size, None, kind)


# (accumulator init, loop condition + step overhead per item, result) of each macro's comprehension
MACROS = {"all": (0, 3, 1), "exists": (0, 4, 1), "exists_one": (0, 3, 2), "map": (LIST_CREATE, 13, 1),
          "filter": (LIST_CREATE, 14, 1)}


def _global_call(name: str, args: list[Value]) -> Value:
    costs = [a.cost for a in args]
    if name == "size":
        return Value(_add(1, *costs), 1, None, "scalar")
    if name in ("type", "int", "uint", "double", "bool", "dyn", "isQuantity", "quantity", "duration", "timestamp"):
        kind = "dyn" if name in ("dyn", "quantity") else "scalar"
        return Value(_add(1, *costs), args[0].size if name == "dyn" else 1, None, kind)
    if name == "string":
        return Value(_add(1, *costs), UNKNOWN, None, "string")
    raise UnknownFunction(f"no cost model for the function {name}()")


def _member_call(name: str, target: Value, args: list[Value]) -> Value:
    base = _add(target.cost, *(a.cost for a in args))
    if name in ("startsWith", "endsWith"):
        return Value(_add(base, _factor(args[0].size, STRING_TRAVERSAL)), 1, None, "scalar")
    if name == "contains":
        cost = _mul(_factor(target.size, STRING_TRAVERSAL), _factor(args[0].size, STRING_TRAVERSAL))
        return Value(_add(base, cost), 1, None, "scalar")
    if name in ("matches", "find", "findAll"):
        cost = _mul(_factor(_add(target.size, 1), STRING_TRAVERSAL), _factor(args[0].size, REGEX_LENGTH))
        kind = "list" if name == "findAll" else "string" if name == "find" else "scalar"
        return Value(_add(base, cost), target.size if name != "matches" else 1, None, kind)
    if name == "size":
        return Value(_add(1, base), 1, None, "scalar")
    if name in ("sum", "min", "max", "isSorted"):
        return Value(_add(base, target.size), 1, None, "scalar")
    if name in ("lowerAscii", "upperAscii", "trim"):
        return Value(_add(base, _factor(target.size, STRING_TRAVERSAL)), target.size, None, "string")
    if name in ("split", "replace"):
        return Value(_add(base, _factor(target.size, 2 * STRING_TRAVERSAL)), target.size, None,
                     "list" if name == "split" else "string")
    if name in ("compareTo", "isGreaterThan", "isLessThan", "sign", "asInteger", "isInteger", "asApproximateFloat",
                "add", "sub"):
        return Value(_add(1, base), 1, None, "scalar")
    raise UnknownFunction(f"no cost model for the method .{name}()")


def _args(tree: Tree) -> list[Tree]:
    lists = [c for c in tree.children if isinstance(c, Tree) and c.data in ("exprlist", "mapinits")]
    return [c for c in lists[0].children if isinstance(c, Tree)] if lists else []


def _unwrap(tree: Tree) -> Tree:
    """The innermost node of a chain of one-child pass-throughs (expr -> ... -> member_dot)."""
    while isinstance(tree, Tree) and len(tree.children) == 1 and isinstance(tree.children[0], Tree):
        tree = tree.children[0]
    return tree


def _string_literal(token: Token) -> str:
    text = str(token)
    raw = text[:1] in "rR"
    text = text[1:] if raw else text
    quote = 3 if text[:3] in ('"""', "'''") else 1
    body = text[quote:-quote]
    return body if raw else codecs.decode(body.encode("utf-8"), "unicode_escape")


def rule_cost(rule: str, schema: dict[str, Any]) -> int:
    """The estimated worst-case cost of one rule evaluated once against a value of ``schema``."""
    tree = celpy.CELParser().parse(rule)
    return Estimator(schema).estimate(tree).cost


# -- a whole CRD ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleCost:
    path: str
    rule: str
    cost: int          # one evaluation
    cardinality: int   # how many times it can run in one object

    @property
    def total(self) -> int:
        return _mul(self.cost, self.cardinality)


def schema_rule_costs(schema: dict[str, Any], path: str = "", cardinality: int | None = 1) -> list[RuleCost]:
    """Every x-kubernetes-validations rule below ``schema`` with its estimated cost and cardinality."""
    found = []
    times = cardinality if cardinality is not None else MAX_REQUEST_BYTES // (min_serialized_size(schema) + 1)
    for index, rule in enumerate(schema.get("x-kubernetes-validations") or []):
        found.append(RuleCost(f"{path}x-kubernetes-validations[{index}]", rule["rule"],
                              rule_cost(rule["rule"], schema), times))
    for name, sub in (schema.get("properties") or {}).items():
        found += schema_rule_costs(sub, f"{path}properties[{name}].", cardinality)
    for key, bound in (("items", "maxItems"), ("additionalProperties", "maxProperties")):
        sub = schema.get(key)
        if isinstance(sub, dict):
            below = _mul(cardinality, schema[bound]) if cardinality is not None and bound in schema else None
            found += schema_rule_costs(sub, f"{path}{key}.", below)
    return found


def over_budget(crd: dict[str, Any]) -> list[str]:
    """Each rule over the per-rule limit, and the CRD if its rules together pass the per-CRD limit."""
    problems = []
    for version in crd["spec"]["versions"]:
        costs = schema_rule_costs(version["schema"]["openAPIV3Schema"])
        problems += [f"{c.path}: estimated cost {c.total} ({c.cost} x {c.cardinality}) exceeds the per-rule "
                     f"limit {PER_RULE_LIMIT}: {c.rule}" for c in costs if c.total > PER_RULE_LIMIT]
        total = _add(*(c.total for c in costs))
        if total > PER_CRD_LIMIT:
            problems.append(f"version {version['name']}: the rules' estimated cost {total} exceeds the per-CRD "
                            f"limit {PER_CRD_LIMIT}")
    return problems
