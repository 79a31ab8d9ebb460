"""The API server's rules for a CustomResourceDefinition schema, as the Kubernetes documentation states them.

Source: "Extend the Kubernetes API with CustomResourceDefinitions"
(https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/),
sections "Specifying a structural schema" (rules 1-4, "IntOrString", "Controlling pruning",
"RawExtension"), "Validation" (the fields that cannot be set), "Validation rules" ("Transition
rules") and "Defaulting" ("Default values must be pruned ... and must validate against a provided
schema"). Where the documentation is terse, the wording of the API server's own refusals is used so
that a violation reads like the 422 a real cluster answers, e.g.
``properties[spec].properties[resources].properties[cpu].anyOf[0].type: must be empty to be structural``.

``kubernetes-validate`` checks a CRD against the CRD type's OpenAPI schema only; none of these rules
is in it, which is how a CRD that every API server refuses passed our tests once.
"""

from __future__ import annotations

import re
from typing import Any

TYPES = {"string", "number", "integer", "boolean", "array", "object"}
JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
# "Validation": these fields cannot be set anywhere in the schema
FORBIDDEN_FIELDS = ("definitions", "dependencies", "deprecated", "discriminator", "id", "patternProperties",
                    "readOnly", "writeOnly", "xml", "$ref")
# rule 3: not within allOf, anyOf, oneOf or not (the API server also refuses titles, externalDocs and
# every x-kubernetes-* extension there)
NOT_IN_JUNCTORS = ("description", "type", "default", "additionalProperties", "nullable", "title", "externalDocs",
                   "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
                   "x-kubernetes-int-or-string", "x-kubernetes-list-map-keys", "x-kubernetes-list-type",
                   "x-kubernetes-map-type", "x-kubernetes-validations")
# "Subresources": only these constructs at the root when the status or scale subresource is enabled
ROOT_WITH_SUBRESOURCES = {"description", "example", "exclusiveMaximum", "exclusiveMinimum", "externalDocs", "format",
                          "items", "maximum", "maxItems", "maxLength", "minimum", "minItems", "minLength",
                          "multipleOf", "pattern", "properties", "required", "title", "type", "uniqueItems"}
INT_OR_STRING_PAIR = [{"type": "integer"}, {"type": "string"}]
VALIDATION_REASONS = {"FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"}
_OLD_SELF = re.compile(r"\boldSelf\b")


def violations(schema: dict[str, Any], *, subresources: bool = True) -> list[str]:
    """Every rule ``schema`` (an ``openAPIV3Schema``) breaks, as ``<path>: <what>``; empty when structural."""
    found: list[str] = []
    if subresources:
        found += [f"{key}: not allowed at the root when the status subresource is enabled"
                  for key in schema if key not in ROOT_WITH_SUBRESOURCES and not key.startswith("x-kubernetes-")]
    _node(schema, "", "root", found, correlatable=True)
    return found


def crd_violations(crd: dict[str, Any]) -> list[str]:
    """``violations`` for every version of a CustomResourceDefinition, paths as the API server prints them."""
    found = []
    for index, version in enumerate(crd["spec"]["versions"]):
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        prefix = f"spec.versions[{index}].schema.openAPIV3Schema"
        if schema is None:
            found.append(f"{prefix}: required (apiextensions.k8s.io/v1 needs a structural schema)")
            continue
        found += [prefix + v.removeprefix("(root)") if v.startswith(("(root)", "[")) else f"{prefix}.{v}"
                  for v in violations(schema, subresources=bool(version.get("subresources")))]
    return found


def _join(path: str, child: str) -> str:
    return f"{path}.{child}" if path and not child.startswith("[") else f"{path}{child}"


def _node(node: Any, path: str, level: str, found: list[str], *, correlatable: bool) -> None:
    """One schema node outside any junctor: rules 1, 2, 4, the forbidden fields and the extensions."""
    if not isinstance(node, dict):
        found.append(f"{path or '(root)'}: must be a schema object")
        return
    here = path or "(root)"
    _forbidden_fields(node, path, found)
    kind = node.get("type")
    int_or_string = node.get("x-kubernetes-int-or-string")
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if kind is not None and kind not in TYPES:
        found.append(f"{_join(path, 'type')}: must be one of {', '.join(sorted(TYPES))}")
    if not kind and not int_or_string and not preserve:  # rule 1
        where = {"root": "at the root", "items": "for specified array items",
                 "field": "for specified object fields"}[level]
        found.append(f"{_join(path, 'type')}: must not be empty {where}")
    if level == "root" and kind and kind != "object":
        found.append(f"{_join(path, 'type')}: must be object at the root")
    _extensions(node, path, found)
    if kind == "array" and not isinstance(node.get("items"), dict):
        found.append(f"{_join(path, 'items')}: must be specified (one schema) for type array")
    if "properties" in node and "additionalProperties" in node:
        found.append(f"{here}: additionalProperties and properties are mutually exclusive")
    if node.get("additionalProperties") is False:
        found.append(f"{_join(path, 'additionalProperties')}: must not be false")
    if node.get("uniqueItems") is True:
        found.append(f"{_join(path, 'uniqueItems')}: must not be true (use x-kubernetes-list-type: set)")
    if level == "root" and "additionalProperties" in node:
        found.append(f"{_join(path, 'additionalProperties')}: must not be used at the root")
    _junctors(node, path, found)
    _rules(node, path, found, correlatable=correlatable)
    if "default" in node:
        found += [f"{_join(path, 'default')}: {problem}" for problem in default_problems(node["default"], node)]
    for name, sub in (node.get("properties") or {}).items():
        sub_path = _join(path, f"properties[{name}]")
        if level == "root" and name == "metadata":
            _metadata(sub, sub_path, found)
        elif level == "root" and name in ("kind", "apiVersion") and isinstance(sub, dict) and sub.get("type") != "string":
            found.append(f"{_join(sub_path, 'type')}: must be string")
        _node(sub, sub_path, "field", found, correlatable=correlatable)
    if isinstance(node.get("additionalProperties"), dict):
        _node(node["additionalProperties"], _join(path, "additionalProperties"), "field", found,
              correlatable=False)
    if isinstance(node.get("items"), dict):
        keyed = node.get("x-kubernetes-list-type") == "map"
        _node(node["items"], _join(path, "items"), "items", found, correlatable=correlatable and keyed)


def _forbidden_fields(node: dict[str, Any], path: str, found: list[str]) -> None:
    found += [f"{_join(path, key)}: must not be set in a CustomResourceDefinition schema"
              for key in FORBIDDEN_FIELDS if key in node]


def _extensions(node: dict[str, Any], path: str, found: list[str]) -> None:
    for key in ("x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields"):
        if key in node and node[key] is not True:
            found.append(f"{_join(path, key)}: must be true or undefined")
    if node.get("x-kubernetes-int-or-string"):
        if node.get("type"):
            found.append(f"{_join(path, 'type')}: must be empty if x-kubernetes-int-or-string is true")
        if node.get("x-kubernetes-preserve-unknown-fields"):
            found.append(f"{_join(path, 'x-kubernetes-preserve-unknown-fields')}: must be false if "
                         f"x-kubernetes-int-or-string is true")
        if node.get("x-kubernetes-embedded-resource"):
            found.append(f"{_join(path, 'x-kubernetes-embedded-resource')}: must be false if "
                         f"x-kubernetes-int-or-string is true")
    if node.get("x-kubernetes-embedded-resource"):
        if node.get("type") != "object":
            found.append(f"{_join(path, 'type')}: must be object if x-kubernetes-embedded-resource is true")
        if not node.get("x-kubernetes-preserve-unknown-fields") and not node.get("properties"):
            found.append(f"{_join(path, 'properties')}: must not be empty if x-kubernetes-embedded-resource is "
                         f"true without x-kubernetes-preserve-unknown-fields")
    list_type = node.get("x-kubernetes-list-type")
    if list_type is not None:
        if node.get("type") != "array":
            found.append(f"{_join(path, 'x-kubernetes-list-type')}: must only be used on arrays")
        if list_type not in ("atomic", "set", "map"):
            found.append(f"{_join(path, 'x-kubernetes-list-type')}: must be atomic, set or map")
        if list_type == "map" and not node.get("x-kubernetes-list-map-keys"):
            found.append(f"{_join(path, 'x-kubernetes-list-map-keys')}: required for x-kubernetes-list-type map")


def _is_int_or_string_pattern(node: dict[str, Any]) -> tuple[bool, bool]:
    """(anyOf is exactly the pair, allOf[0].anyOf is exactly the pair): the two IntOrString exceptions."""
    any_of = node.get("anyOf") == INT_OR_STRING_PAIR
    all_of = node.get("allOf")
    first = isinstance(all_of, list) and all_of and isinstance(all_of[0], dict) \
        and all_of[0].get("anyOf") == INT_OR_STRING_PAIR
    return any_of, bool(first)


def _junctors(node: dict[str, Any], path: str, found: list[str]) -> None:
    skip_any_of, skip_first_all_of = _is_int_or_string_pattern(node)
    for junctor in JUNCTORS:
        if junctor not in node:
            continue
        branches = [node[junctor]] if junctor == "not" else node[junctor]
        if not isinstance(branches, list):
            found.append(f"{_join(path, junctor)}: must be a list of schemas")
            continue
        for index, branch in enumerate(branches):
            where = _join(path, junctor if junctor == "not" else f"{junctor}[{index}]")
            if junctor == "anyOf" and skip_any_of:
                continue
            skip_nested_any_of = junctor == "allOf" and index == 0 and skip_first_all_of
            _nested(branch, where, node, found, skip_any_of=skip_nested_any_of)


def _nested(branch: Any, path: str, outside: dict[str, Any], found: list[str], *, skip_any_of: bool) -> None:
    """Inside a junctor: value validations only (rule 3), for fields specified outside too (rule 2)."""
    if not isinstance(branch, dict):
        found.append(f"{path}: must be a schema object")
        return
    _forbidden_fields(branch, path, found)
    for key in NOT_IN_JUNCTORS:
        if key in branch:
            verb = "must be empty" if key in ("type", "description", "title", "x-kubernetes-list-map-keys") \
                else "must be false" if key in ("nullable", "x-kubernetes-preserve-unknown-fields",
                                                "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string") \
                else "must be undefined"
            found.append(f"{_join(path, key)}: {verb} to be structural")
    outside_properties = outside.get("properties") or {}
    for name, sub in (branch.get("properties") or {}).items():
        sub_path = _join(path, f"properties[{name}]")
        if name == "metadata":
            found.append(f"{sub_path}: must not be specified in a nested context")
        if name not in outside_properties:
            found.append(f"{sub_path}: must also be specified outside of {path.rsplit('.', 1)[-1]} (rule 2)")
        _nested(sub, sub_path, outside_properties.get(name) or {}, found, skip_any_of=False)
    if "items" in branch:
        if not isinstance(outside.get("items"), dict):
            found.append(f"{_join(path, 'items')}: must also be specified outside of the junctor (rule 2)")
        _nested(branch["items"], _join(path, "items"), outside.get("items") or {}, found, skip_any_of=False)
    inner = {key: value for key, value in branch.items() if not (skip_any_of and key == "anyOf")}
    _junctors_nested(inner, path, outside, found)


def _junctors_nested(branch: dict[str, Any], path: str, outside: dict[str, Any], found: list[str]) -> None:
    for junctor in JUNCTORS:
        if junctor not in branch:
            continue
        subs = [branch[junctor]] if junctor == "not" else branch[junctor]
        for index, sub in enumerate(subs if isinstance(subs, list) else []):
            where = _join(path, junctor if junctor == "not" else f"{junctor}[{index}]")
            _nested(sub, where, outside, found, skip_any_of=False)


def _metadata(node: Any, path: str, found: list[str]) -> None:
    """Rule 4: metadata at the root may restrict name and generateName, nothing else."""
    if not isinstance(node, dict):
        return
    if node.get("type") not in (None, "object"):
        found.append(f"{_join(path, 'type')}: must be object")
    if "default" in node:
        found.append(f"{_join(path, 'default')}: must not be set on metadata")
    extra = [key for key in node if key not in ("type", "properties")]
    extra += [f"properties[{name}]" for name in (node.get("properties") or {}) if name not in ("name", "generateName")]
    if extra:
        found.append(f"{path}: must not specify anything other than name and generateName, but "
                     f"metadata is implicitly specified (found {', '.join(extra)})")


def _rules(node: dict[str, Any], path: str, found: list[str], *, correlatable: bool) -> None:
    rules = node.get("x-kubernetes-validations")
    if rules is None:
        return
    if not isinstance(rules, list):
        found.append(f"{_join(path, 'x-kubernetes-validations')}: must be a list")
        return
    for index, rule in enumerate(rules):
        where = _join(path, f"x-kubernetes-validations[{index}]")
        if not isinstance(rule, dict) or not isinstance(rule.get("rule"), str) or not rule["rule"].strip():
            found.append(f"{_join(where, 'rule')}: required")
            continue
        message = rule.get("message")
        if message is not None and (not message.strip() or "\n" in message or len(message) > 2048):
            found.append(f"{_join(where, 'message')}: must be non-empty, one line and at most 2048 characters")
        if rule.get("reason") is not None and rule["reason"] not in VALIDATION_REASONS:
            found.append(f"{_join(where, 'reason')}: must be one of {', '.join(sorted(VALIDATION_REASONS))}")
        if _OLD_SELF.search(rule["rule"]) and not correlatable:
            found.append(f"{_join(where, 'rule')}: oldSelf cannot be used on the uncorrelatable portion of the "
                         f"schema (below a list that is not x-kubernetes-list-type map)")


def default_problems(value: Any, schema: dict[str, Any]) -> list[str]:
    """Why a default is refused: it must survive pruning unchanged and validate against its own schema."""
    problems: list[str] = []
    _check_default(value, schema, "", problems)
    return problems


def _check_default(value: Any, schema: dict[str, Any], where: str, problems: list[str]) -> None:
    at = f" at {where}" if where else ""
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            problems.append(f"{value!r}{at} is not an integer or a string")
        return
    kind = schema.get("type")
    python = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list,
              "object": dict}.get(kind or "")
    if python and (not isinstance(value, python) or (kind != "boolean" and isinstance(value, bool))):
        problems.append(f"{value!r}{at} is not of type {kind}")
        return
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{value!r}{at} is not one of the enum values")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{value!r}{at} does not match the pattern")
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            problems.append(f"{value!r}{at} has a length outside minLength/maxLength")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            problems.append(f"{value!r}{at} is outside minimum/maximum")
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            problems.append(f"{where or 'the default'} has a length outside minItems/maxItems")
        for index, item in enumerate(value):
            _check_default(item, schema.get("items") or {}, f"{where}[{index}]", problems)
    if isinstance(value, dict):
        properties = schema.get("properties")
        keep = schema.get("x-kubernetes-preserve-unknown-fields") or isinstance(schema.get("additionalProperties"),
                                                                              dict)
        for key, item in value.items():
            sub = (properties or {}).get(key)
            if sub is None and not keep:
                problems.append(f"{where + '.' if where else ''}{key} would be pruned (not in the schema)")
            elif sub is not None:
                _check_default(item, sub, f"{where + '.' if where else ''}{key}", problems)
        missing = [key for key in schema.get("required", []) if key not in value]
        if missing:
            problems.append(f"{where or 'the default'} lacks required {', '.join(missing)}")
