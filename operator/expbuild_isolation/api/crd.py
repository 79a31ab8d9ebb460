"""Generate the ExecutionTask and ExecutionPolicy CustomResourceDefinitions from the pydantic models.

``python -m expbuild_isolation.api.crd`` (or ``expbuild-isolation crd``) prints
the task's; ``crds/executiontask.yaml`` is its committed output and a test fails
when the two differ. ``--policy`` prints the policy's (``crds/executionpolicy.yaml``). The JSON schema pydantic produces is turned into a Kubernetes
*structural* schema: references inlined, ``Optional`` unwrapped, titles dropped,
int-or-string quantities marked, CEL rules kept.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from .policy import POLICY_KIND, POLICY_PLURAL, ExecutionPolicySpec
from .task import GROUP, KIND, PLURAL, VERSION, ExecutionTaskSpec, ExecutionTaskStatus

_DROP = {"title", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if node.get("x-kubernetes-int-or-string"):
        keep = {k: v for k, v in node.items() if k not in _DROP and k != "default"}
        if "default" in node and node["default"] is not None:
            keep["default"] = node["default"]
        return keep
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(branches) == 1:
            merged = {**_structural(branches[0], defs), **_structural(rest, defs)}
            if merged.get("default", 0) is None:
                merged.pop("default")
            return merged
        raise ValueError(f"cannot express anyOf {node['anyOf']!r} in a structural schema")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "additionalProperties" and value is False):
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = _structural(value, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if out.get("default", 0) is None:
        out.pop("default")
    return out


def schema_for(model: type) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one of our models."""
    raw = model.model_json_schema(by_alias=True, mode="validation")  # type: ignore[attr-defined]
    defs = raw.get("$defs", {})
    return _structural(raw, defs)


MUTABLE_SPEC_FIELDS = ("cancel",)


def immutable_once_created(spec_schema: dict[str, Any]) -> dict[str, Any]:
    """Add the CEL transition rules that freeze ``spec`` after create, except ``spec.cancel``.

    What was placed on a node agent or rendered into a Job must be what runs: a tenant who may patch the task
    must not swap the command or the isolation of a task already scheduled. Transition rules (``oldSelf``)
    run only on update and only where the old value exists, so each field gets ``self == oldSelf`` and the
    spec gets one rule that no field without a default appears or disappears.
    """
    frozen = [name for name in spec_schema["properties"] if name not in MUTABLE_SPEC_FIELDS]
    for name in frozen:
        node = spec_schema["properties"][name]
        node["x-kubernetes-validations"] = [*node.get("x-kubernetes-validations", []), {
            "rule": "self == oldSelf",
            "message": f"spec.{name} cannot change once the task exists (only spec.cancel can); create a new task"}]
    optional = [name for name in frozen
                if name not in spec_schema.get("required", []) and "default" not in spec_schema["properties"][name]]
    presence = " && ".join(f"has(self.{name}) == has(oldSelf.{name})" for name in optional)
    spec_schema["x-kubernetes-validations"] = [*spec_schema.get("x-kubernetes-validations", []), {
        "rule": presence, "message": "spec fields cannot be added or removed once the task exists (only "
                                      "spec.cancel can change); create a new task"}]
    return spec_schema


def build_crd() -> dict[str, Any]:
    spec_schema = immutable_once_created(schema_for(ExecutionTaskSpec))
    spec_schema["description"] = "What to run and how strongly to isolate it."
    status_schema = schema_for(ExecutionTaskStatus)
    status_schema["description"] = "What happened; written by the operator or the node agent."
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Exit", "type": "integer", "jsonPath": ".status.exitCode"},
        {"name": "Executor", "type": "string", "jsonPath": ".status.executor"},
        {"name": "Isolation", "type": "string", "jsonPath": ".status.isolationLevel"},
        {"name": "Node", "type": "string", "jsonPath": ".status.node"},
        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(KIND, PLURAL, "Namespaced", "xt", columns,
                "An untrusted build or test command, run hardened by expbuild-isolation.",
                {"spec": spec_schema, "status": status_schema})


def build_policy_crd() -> dict[str, Any]:
    """The cluster-scoped ExecutionPolicy CRD: an administrator's object, no status (nothing writes one)."""
    spec_schema = schema_for(ExecutionPolicySpec)
    spec_schema["description"] = "Which namespaces this policy governs, and what their tasks may ask for."
    columns = [
        {"name": "Minimum", "type": "string", "jsonPath": ".spec.isolation.minimum"},
        {"name": "Below", "type": "string", "jsonPath": ".spec.isolation.belowMinimum"},
        {"name": "Quota", "type": "integer", "jsonPath": ".spec.maxUnfinishedTasks"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    # spec is required: the admission policy's CEL reads params.spec.*
    return _crd(POLICY_KIND, POLICY_PLURAL, "Cluster", "xpol", columns,
                "An administrator's floors and caps for the ExecutionTasks of the namespaces it selects.",
                {"spec": spec_schema})


def _crd(kind: str, plural: str, scope: str, short_name: str, columns: list[dict[str, Any]], description: str,
         schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One served and stored version of ours; a status subresource when there is a status schema."""
    version: dict[str, Any] = {"name": VERSION, "served": True, "storage": True}
    if "status" in schemas:
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = columns
    version["schema"] = {"openAPIV3Schema": {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                       **schemas},
    }}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/name": "expbuild-isolation"}},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": [short_name], "categories": ["expbuild"]},
            "versions": [version],
        },
    }


def render_crd_yaml() -> str:
    header = "# Generated from operator/expbuild_isolation/api/task.py by `expbuild-isolation crd`. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)


def render_policy_crd_yaml() -> str:
    header = ("# Generated from operator/expbuild_isolation/api/policy.py by `expbuild-isolation crd --policy`. "
              "Do not edit.\n")
    return header + yaml.safe_dump(build_policy_crd(), sort_keys=False, width=120)


def main() -> None:
    sys.stdout.write(render_policy_crd_yaml() if "--policy" in sys.argv[1:] else render_crd_yaml())


if __name__ == "__main__":
    main()
