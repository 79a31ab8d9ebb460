"""The CRD passes the API server's structural-schema rules (api/structural.py), in every copy we ship."""

import copy
from pathlib import Path

import pytest
import yaml

from expbuild_isolation.api.crd import build_crd, build_policy_crd
from expbuild_isolation.api.structural import crd_violations, default_problems, violations

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [ROOT / "crds" / "executiontask.yaml", ROOT / "helm" / "expbuild-isolation" / "files" / "executiontask.yaml",
           ROOT / "manifests" / "install" / "10-crd.yaml", ROOT / "crds" / "executionpolicy.yaml",
           ROOT / "helm" / "expbuild-isolation" / "files" / "executionpolicy.yaml"]


def _crds(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text())
            if doc and doc.get("kind") == "CustomResourceDefinition" and doc["spec"]["group"] == "expbuild.io"]


def test_the_generated_crds_are_structural():
    assert crd_violations(build_crd()) == []
    assert crd_violations(build_policy_crd()) == []


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_copy_of_the_crd_is_structural(path):
    crds = _crds(path)
    assert crds, f"no ExecutionTask CRD in {path}"
    for crd in crds:
        assert crd_violations(crd) == []


OLD_QUANTITY = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}],
                "x-kubernetes-int-or-string": True, "pattern": "^[0-9]+$", "description": "CPU cores"}


def test_the_walker_refuses_the_quantity_schema_every_api_server_refused():
    """Issue #12: 422 `...properties[cpu].anyOf[0].type: Forbidden: must be empty to be structural`."""
    crd = build_crd()
    resources = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["resources"]
    resources["properties"]["cpu"] = copy.deepcopy(OLD_QUANTITY)
    found = crd_violations(crd)
    assert ("spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[resources].properties[cpu]"
            ".anyOf[0].type: must be empty to be structural") in found


def test_the_int_or_string_patterns_are_the_only_typed_junctors():
    assert violations({"type": "object", "properties": {"q": {"x-kubernetes-int-or-string": True,
                                                              "anyOf": [{"type": "integer"}, {"type": "string"}]}}}) == []
    assert violations({"type": "object", "properties": {"q": {"x-kubernetes-int-or-string": True, "allOf": [
        {"anyOf": [{"type": "integer"}, {"type": "string"}]}, {"pattern": "x"}]}}}) == []
    reordered = {"type": "object", "properties": {"q": {"x-kubernetes-int-or-string": True,
                                                        "anyOf": [{"type": "string"}, {"type": "integer"}]}}}
    assert "properties[q].anyOf[0].type: must be empty to be structural" in violations(reordered)


def test_the_documented_non_structural_example_fails_each_documented_rule():
    """"Specifying a structural schema", non-structural example 3, and the six violations the page lists."""
    example = {
        "properties": {
            "foo": {"pattern": "abc"},
            "metadata": {"type": "object", "properties": {
                "name": {"type": "string", "pattern": "^a"},
                "finalizers": {"type": "array", "items": {"type": "string", "pattern": "my-finalizer"}}}}},
        "anyOf": [{"properties": {"bar": {"type": "integer", "minimum": 42}}, "required": ["bar"],
                   "description": "foo bar object"}],
    }
    found = "\n".join(violations(example, subresources=False))
    assert "type: must not be empty at the root" in found                               # rule 1, root
    assert "properties[foo].type: must not be empty for specified object fields" in found  # rule 1, foo
    assert "anyOf[0].properties[bar]: must also be specified outside" in found           # rule 2
    assert "anyOf[0].properties[bar].type: must be empty to be structural" in found      # rule 3, type
    assert "anyOf[0].description: must be empty to be structural" in found               # rule 3, description
    assert "properties[metadata]: must not specify anything other than name and generateName" in found  # rule 4
    corrected = {"type": "object", "description": "foo bar object",
                 "properties": {"foo": {"type": "string", "pattern": "abc"}, "bar": {"type": "integer"},
                                "metadata": {"type": "object", "properties": {"name": {"type": "string",
                                                                                       "pattern": "^a"}}}},
                 "anyOf": [{"properties": {"bar": {"minimum": 42}}, "required": ["bar"]}]}
    assert violations(corrected, subresources=False) == []


@pytest.mark.parametrize("schema, fragment", [
    ({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "string"}},
     "mutually exclusive"),
    ({"type": "object", "properties": {"a": {"type": "object", "additionalProperties": False}}}, "must not be false"),
    ({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}},
     "uniqueItems"),
    ({"type": "object", "properties": {"a": {"$ref": "#/x"}}}, "properties[a].$ref: must not be set"),
    ({"type": "object", "properties": {"a": {"type": "array"}}}, "properties[a].items: must be specified"),
    ({"type": "object", "properties": {"a": {"type": "string", "x-kubernetes-preserve-unknown-fields": False}}},
     "must be true or undefined"),
    ({"type": "object", "properties": {"a": {"x-kubernetes-int-or-string": True, "type": "string"}}},
     "must be empty if x-kubernetes-int-or-string"),
    ({"type": "object", "properties": {"a": {"type": "string", "enum": ["x"], "default": "y"}}},
     "properties[a].default: 'y' is not one of the enum values"),
    ({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}},
                                             "default": {"c": "x"}}}}, "c would be pruned"),
    ({"type": "array", "items": {"type": "string"}}, "type: must be object at the root"),
    ({"type": "object", "properties": {"l": {"type": "array", "items": {
        "type": "object", "properties": {"n": {"type": "string"}},
        "x-kubernetes-validations": [{"rule": "self.n == oldSelf.n"}]}}}}, "oldSelf cannot be used"),
    ({"type": "object", "x-kubernetes-validations": [{"rule": "true", "message": "two\nlines"}]}, "one line"),
])
def test_each_documented_restriction_is_enforced(schema, fragment):
    assert any(fragment in v for v in violations(schema, subresources=False)), violations(schema, subresources=False)


def test_a_transition_rule_on_the_spec_is_correlatable():
    """The immutability rule the lead adds (`self == oldSelf` on spec) sits where oldSelf is allowed."""
    crd = build_crd()
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["x-kubernetes-validations"] = [{"rule": "self == oldSelf", "message": "spec is immutable"}]
    assert crd_violations(crd) == []


def test_defaults_in_the_crd_are_valid_and_survive_pruning():
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    checked = 0
    stack = [schema]
    while stack:
        node = stack.pop()
        if "default" in node:
            assert default_problems(node["default"], node) == []
            checked += 1
        stack += list((node.get("properties") or {}).values()) + ([node["items"]] if "items" in node else [])
    assert checked >= 10
