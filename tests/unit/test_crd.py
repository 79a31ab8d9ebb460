"""The committed CRD is what the models generate, is a valid CRD, and rejects what the models reject."""

import copy
import re
from pathlib import Path

import celpy
import kubernetes_validate
import pytest
import yaml

from expbuild_isolation.api.crd import build_crd, render_crd_yaml
from expbuild_isolation.api.quantities import QuantityError, parse_quantity

from .manifests import BAD, GOOD, LOCAL_ONLY, SAME_MESSAGE

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "executiontask.yaml"


def test_committed_crd_matches_the_models():
    assert CRD_FILE.read_text() == render_crd_yaml(), (
        "crds/executiontask.yaml is stale: run `expbuild-isolation crd > crds/executiontask.yaml`")


def test_crd_validates_against_the_kubernetes_schema():
    kubernetes_validate.validate(build_crd(), "1.30", strict=True)


def test_printer_columns_and_short_name():
    crd = build_crd()
    version = crd["spec"]["versions"][0]
    names = [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority", 0) == 0]
    assert names == ["Phase", "Exit", "Executor", "Isolation", "Node", "Age"]
    assert crd["spec"]["names"]["shortNames"] == ["xt"]
    assert version["subresources"] == {"status": {}}


def _walk(schema):
    yield schema
    for sub in schema.get("properties", {}).values():
        yield from _walk(sub)
    if "items" in schema:
        yield from _walk(schema["items"])


def test_schema_is_structural():
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for node in _walk(schema):
        assert "$ref" not in node and "title" not in node
        assert not ("properties" in node and "additionalProperties" in node)
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True
        else:
            assert "type" in node, node


def test_every_spec_field_has_a_description_for_kubectl_explain():
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    missing = [name for name, sub in spec["properties"].items() if not sub.get("description")]
    assert not missing


_ABSENT = object()


def go_search(pattern, value):
    """re.search with Go's RE2 meaning of `$` (the end of the text; Python's also matches before a final newline)."""
    return re.search(re.sub(r"(?<!\\)\$", r"\\Z", pattern), value)


def _find(text, regex):
    match = re.search(str(regex), str(text))
    return celpy.celtypes.StringType(match.group(0) if match else "")


def _is_quantity(text):
    try:
        parse_quantity(str(text))
    except QuantityError:
        return celpy.celtypes.BoolType(False)
    return celpy.celtypes.BoolType(True)


def _compare(left, right):
    return celpy.celtypes.IntType((left > right) - (left < right))


# The Kubernetes CEL libraries our rules use (regex find, quantity), which cel-python lacks; a quantity is
# emulated with our own parser, whose grammar the CRD's pattern admits exactly.
K8S_FUNCTIONS = {"find": _find, "isQuantity": _is_quantity, "quantity": lambda text: parse_quantity(str(text)),
                 "compareTo": _compare}


class ApiServer:
    """The part of the API server's validation a CRD drives: defaults, types, enums, patterns, bounds, CEL."""

    def __init__(self, schema):
        self.schema = schema
        self.cel = celpy.Environment()

    def admit(self, obj):
        errors = []
        self._check(self.schema, copy.deepcopy(obj), "", errors)
        return errors

    def stored(self, obj):
        """``obj`` as the API server stores it (defaults filled in); AssertionError if it would refuse it."""
        stored, errors = copy.deepcopy(obj), []
        self._check(self.schema, stored, "", errors)
        assert not errors, errors
        return stored

    def update(self, old, new):
        """Errors of replacing ``old`` (stored, so defaulted) with ``new``: transition rules see oldSelf."""
        stored = copy.deepcopy(old)
        self._check(self.schema, stored, "", [])
        errors = []
        self._check(self.schema, copy.deepcopy(new), "", errors, stored)
        return errors

    def _check(self, schema, value, path, errors, old=_ABSENT):
        if schema.get("x-kubernetes-int-or-string"):
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                errors.append(f"{path}: must be int or string")
                return
            if isinstance(value, str) and not go_search(schema["pattern"], value):
                errors.append(f"{path}: bad quantity")
            if isinstance(value, str) and len(value) > schema.get("maxLength", 1 << 30):
                errors.append(f"{path}: length")
        kind = schema.get("type")
        python = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool}.get(kind)
        if python and (not isinstance(value, python) or (kind == "integer" and isinstance(value, bool))):
            errors.append(f"{path}: must be {kind}")
            return
        if "enum" in schema and value not in schema["enum"]:
            errors.append(f"{path}: not in enum")
        if kind == "string":
            if "pattern" in schema and not go_search(schema["pattern"], value):
                errors.append(f"{path}: pattern")
            if len(value) > schema.get("maxLength", 1 << 30) or len(value) < schema.get("minLength", 0):
                errors.append(f"{path}: length")
        if kind == "integer" and not schema.get("minimum", -1 << 63) <= value <= schema.get("maximum", 1 << 63):
            errors.append(f"{path}: bounds")
        if kind == "array":
            if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", 1 << 30):
                errors.append(f"{path}: items")
            for index, item in enumerate(value):
                self._check(schema["items"], item, f"{path}[{index}]", errors)
        if kind == "object" and "properties" in schema:
            for name, sub in schema["properties"].items():
                if name not in value and "default" in sub:
                    value[name] = copy.deepcopy(sub["default"])
            errors.extend(f"{path}.{name}: required" for name in schema.get("required", []) if name not in value)
            for name, item in value.items():
                if name in schema["properties"]:
                    was = old.get(name, _ABSENT) if isinstance(old, dict) else _ABSENT
                    self._check(schema["properties"][name], item, f"{path}.{name}", errors, was)
        for rule in schema.get("x-kubernetes-validations", []):
            activation = {"self": celpy.json_to_cel(value)}
            if "oldSelf" in rule["rule"]:
                if old is _ABSENT:
                    continue  # a transition rule: only on update, and only where the old value exists
                activation["oldSelf"] = celpy.json_to_cel(old)
            program = self.cel.program(self.cel.compile(rule["rule"]), functions=K8S_FUNCTIONS)
            result = program.evaluate(activation)
            if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
                errors.append(f"{path}: {rule['message']}")


@pytest.fixture(scope="module")
def api_server():
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return ApiServer(schema)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_api_server_admits_good_manifests(api_server, name):
    assert api_server.admit(GOOD[name]) == []


@pytest.mark.parametrize("name", sorted(set(BAD) - LOCAL_ONLY))
def test_api_server_rejects_what_the_models_reject(api_server, name):
    manifest, _ = BAD[name]
    assert api_server.admit(manifest), f"{name} would be admitted by the API server"


def test_examples_are_valid_tasks_and_admitted(api_server):
    from expbuild_isolation.worker.local import load_task

    examples = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ExecutionTask":
                load_task(path)
                assert api_server.admit(doc) == [], path


# A tenant who may patch a task must not swap what was placed on a node agent or rendered into a Job.
@pytest.mark.parametrize("change", [
    {"command": ["sh", "-c", "id"]},
    {"isolation": {"executor": "host", "minimum": "None", "seccompProfile": "Unconfined"}},  # absent before
    {"env": [{"name": "X", "value": "1"}]},
    {"timeout": "10h"},
    {"image": "localhost/other:latest"},
])
def test_the_spec_cannot_change_once_the_task_exists(api_server, change):
    from .manifests import task

    old = task(image="localhost/busybox:latest", resources={"memory": "1Gi"})
    new = copy.deepcopy(old)
    new["spec"].update(change)
    assert api_server.admit(new) == []  # the same spec is fine as a new task
    errors = api_server.update(old, new)
    assert errors and all("create a new task" in error for error in errors), errors


def test_a_field_cannot_be_dropped_once_the_task_exists(api_server):
    from .manifests import task

    old = task(isolation={"minimum": "VM"})
    new = copy.deepcopy(old)
    del new["spec"]["isolation"]
    assert any("added or removed" in error for error in api_server.update(old, new))


def test_spec_cancel_and_metadata_can_change(api_server):
    from .manifests import task

    old = task(isolation={"minimum": "VM"}, env=[{"name": "A", "value": "b"}])
    new = copy.deepcopy(old)
    new["spec"]["cancel"] = True
    new["metadata"]["labels"] = {"team": "x"}
    assert api_server.update(old, old) == []
    assert api_server.update(old, new) == []


@pytest.mark.parametrize("name", sorted(SAME_MESSAGE))
def test_the_api_server_and_the_models_refuse_with_the_same_words(api_server, name):
    from expbuild_isolation.worker.local import InvalidTask, parse_task

    manifest, _ = BAD[name]
    words = SAME_MESSAGE[name]
    assert any(words in error for error in api_server.admit(manifest)), api_server.admit(manifest)
    with pytest.raises(InvalidTask, match=re.escape(words)):
        parse_task(manifest)


@pytest.mark.parametrize("timeout", ["7d", "168h", "604800s", "6d23h59m59.999999999s", "1d", "90s", "250ms", "45",
                                     "0000604800", "1.5h", "604800000ms", "10080m"])
def test_the_timeout_rule_admits_what_the_model_admits(api_server, timeout):
    from expbuild_isolation.worker.local import parse_task

    manifest = copy.deepcopy(GOOD["minimal"])
    manifest["spec"]["timeout"] = timeout
    assert parse_task(manifest).spec.timeout_seconds <= 7 * 86400
    assert api_server.admit(manifest) == []
