"""Render a Markdown reference of the ExecutionTask fields from the pydantic models.

``expbuild-isolation crd --reference`` prints it; ``docs/crd-reference.md`` is its
committed output and ``tests/unit/test_reference.py`` fails when the two differ.
The walk goes over the same structural schema the CRD carries (``crd.schema_for``),
so the reference says exactly what the API server enforces: one row per field
path, with its type, default, constraints and ``Field(description=...)`` text.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .crd import schema_for
from .task import API_VERSION, KIND, ExecutionTaskSpec, ExecutionTaskStatus

HEADER = ("<!-- Generated from operator/expbuild_isolation/api/task.py by "
          "`expbuild-isolation crd --reference > docs/crd-reference.md`. Do not edit. -->\n")


@dataclass(frozen=True)
class FieldRow:
    """One documented field: ``spec.inputs[].path`` and what the schema says about it."""

    path: str
    type: str
    default: str
    constraints: tuple[str, ...]
    description: str


def field_rows(root: str, schema: dict[str, Any]) -> Iterator[FieldRow]:
    """Every field under ``schema``, depth first, in declaration order."""
    required = set(schema.get("required", []))
    for name, sub in schema.get("properties", {}).items():
        path = f"{root}.{name}"
        yield _row(path, sub, required=name in required)
        yield from _children(path, sub)


def _children(path: str, schema: dict[str, Any]) -> Iterator[FieldRow]:
    if schema.get("type") == "object":
        yield from field_rows(path, schema)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            yield from _children(f"{path}.<key>", extra)
    elif schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        yield from field_rows(f"{path}[]", schema["items"])


def _row(path: str, schema: dict[str, Any], *, required: bool) -> FieldRow:
    default = "" if "default" not in schema else _literal(schema["default"])
    constraints = ["required"] if required else []
    constraints += _constraints(schema)
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        constraints += [f"each element: {c}" for c in _constraints(schema["items"])]
    return FieldRow(path, _type_name(schema), default, tuple(constraints), schema.get("description", ""))


def _type_name(schema: dict[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "quantity (integer or string)"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type_name(schema.get('items') or {})}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of string to {_type_name(schema['additionalProperties'])}"
    if kind == "string" and "enum" in schema:
        return "enum"
    if kind == "string" and schema.get("format"):
        return f"string ({schema['format']})"
    return str(kind)


_BOUNDS = [("minLength", "min length"), ("maxLength", "max length"), ("minItems", "min items"),
           ("maxItems", "max items"), ("minimum", "≥"), ("maximum", "≤")]


def _constraints(schema: dict[str, Any]) -> list[str]:
    out = []
    if "enum" in schema:
        out.append("one of " + ", ".join(_code(str(v)) for v in schema["enum"]))
    for key, label in _BOUNDS:
        if key in schema and not (key == "minimum" and schema.get("x-kubernetes-int-or-string")):
            out.append(f"{label} {schema[key]}")
    if schema.get("x-kubernetes-int-or-string"):
        out.append("Kubernetes quantity, non-negative")
    elif "pattern" in schema:
        out.append("pattern " + _code(schema["pattern"]))
    for rule in schema.get("x-kubernetes-validations", []):
        out.append(f"{rule['message']} ({_code(rule['rule'])})")
    return out


def _literal(value: Any) -> str:
    return _code(json.dumps(value, ensure_ascii=False))


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: list[FieldRow]) -> str:
    lines = ["| Field | Type | Default | Constraints | Description |", "|---|---|---|---|---|"]
    for row in rows:
        cells = [_code(row.path), row.type, row.default, "; ".join(row.constraints), row.description]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def render_reference() -> str:
    """The whole reference document as Markdown."""
    spec = list(field_rows("spec", schema_for(ExecutionTaskSpec)))
    status = list(field_rows("status", schema_for(ExecutionTaskStatus)))
    return "".join([
        HEADER, "\n",
        f"# {KIND} reference ({API_VERSION})\n\n",
        "Every field of the custom resource, as the API server validates it. `a[].b` is field `b` of each "
        "element of list `a`. Quantities are Kubernetes quantities (`500m`, `2Gi`); durations are Go-style "
        "(`90s`, `10m`, `1h30m`). Rules marked with a CEL expression are checked by the API server and again "
        "by `expbuild-isolation run`.\n\n",
        "## spec\n\nWhat to run and how strongly to isolate it. Unknown fields are refused by "
        "`expbuild-isolation run`; the API server drops them, or rejects them under "
        "`kubectl apply --validate=strict`.\n\n",
        _table(spec), "\n",
        "## status\n\nWhat happened; written by the operator or the node agent, never by users.\n\n",
        _table(status),
    ])


def main() -> None:
    sys.stdout.write(render_reference())


if __name__ == "__main__":
    main()
