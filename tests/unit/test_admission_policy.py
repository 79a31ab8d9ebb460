"""The chart's ValidatingAdmissionPolicy refuses, at the API server, the tasks the operator refuses.

Its CEL is evaluated with cel-python (the evaluator of the CRD tests) plus the Kubernetes CEL library
functions it calls (``kubernetes_cel``), the way the API server does: once per ExecutionPolicy the binding
selects, with ``params`` the policy and ``object`` the task as stored (CRD defaults applied). Each refusal
must say what ``api.judge`` says, word for word.
"""

from __future__ import annotations

import celpy
import kubernetes_validate
import pytest
import yaml
from celpy import celtypes
from expbuild_isolation.api.crd import build_crd, build_policy_crd
from expbuild_isolation.api.judge import judge
from expbuild_isolation.api.policy import ExecutionPolicy, NamespaceSelector
from expbuild_isolation.api.task import ExecutionTask
from expbuild_isolation.kube.admission_policy import render_yaml

from tests.install.chart import CHART, HELM, NO_HELM, find, one, render_chart, template

from .kubernetes_cel import program
from .manifests import task as task_manifest
from .policy_cases import ALLOWED, VIOLATIONS
from .signature_cases import Publisher, cases, verifying
from .test_crd import ApiServer

pytestmark = pytest.mark.skipif(HELM is None, reason=NO_HELM)
TASKS = ApiServer(build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
POLICIES = ApiServer(build_policy_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


class AdmissionPolicy:
    """A ValidatingAdmissionPolicy and its binding as the API server applies them to a create."""

    def __init__(self, policy: dict, binding: dict) -> None:
        assert binding["spec"]["policyName"] == policy["metadata"]["name"]
        assert binding["spec"]["validationActions"] == ["Deny"]
        assert binding["spec"]["paramRef"] == {"selector": {}, "parameterNotFoundAction": "Allow"}  # every policy
        env = celpy.Environment()
        self.variables = [(v["name"], program(env, v["expression"])) for v in policy["spec"]["variables"]]
        self.validations = [(program(env, v["expression"]), program(env, v["messageExpression"]))
                            for v in policy["spec"]["validations"]]

    def refusals(self, task: dict, policies: list[dict], namespace_labels: dict) -> list[str]:
        """The messages the API server answers ``kubectl apply`` of ``task`` with (empty: admitted)."""
        found = []
        for params in policies:  # no policy at all: parameterNotFoundAction Allow
            activation = {"object": celpy.json_to_cel(TASKS.stored(task)),
                          "params": celpy.json_to_cel(POLICIES.stored(params)),
                          "namespaceObject": celpy.json_to_cel({"metadata": {"name": "ci",
                                                                             "labels": namespace_labels}})}
            variables: dict = {}
            for name, compiled in self.variables:
                variables[name] = compiled.evaluate(activation | {"variables": celtypes.MapType(variables)})
            activation["variables"] = celtypes.MapType(variables)
            for rule, message in self.validations:
                result = rule.evaluate(activation)
                assert isinstance(result, celtypes.BoolType), f"evaluation failed: {result}"  # failurePolicy Fail
                if not result:
                    found.append(str(message.evaluate(activation)))
        return found


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return render_chart()


@pytest.fixture(scope="module")
def admission(rendered) -> AdmissionPolicy:
    return AdmissionPolicy(one(rendered, "ValidatingAdmissionPolicy"), one(rendered, "ValidatingAdmissionPolicyBinding"))


def policy(name: str = "p", **spec) -> dict:
    return {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionPolicy", "metadata": {"name": name},
            "spec": spec}


def judged(task: dict, policies: list[dict], labels: dict) -> list[str]:
    verdict = judge(ExecutionTask.model_validate(task), [ExecutionPolicy.model_validate(p) for p in policies], labels)
    return [str(v) for v in verdict.violations]


def test_the_chart_copy_is_what_the_code_renders():
    assert (CHART / "files" / "admission-policy.yaml").read_text() == render_yaml(), (
        "run `python -m expbuild_isolation.kube.admission_policy > helm/expbuild-isolation/files/admission-policy.yaml`")


def test_the_policy_and_binding_validate_against_kubernetes(rendered):
    for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
        kubernetes_validate.validate(one(rendered, kind), "1.30", strict=True)
    vap = one(rendered, "ValidatingAdmissionPolicy")["spec"]
    assert vap["paramKind"] == {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionPolicy"}
    assert vap["matchConstraints"]["resourceRules"] == [{"apiGroups": ["expbuild.io"], "apiVersions": ["v1alpha1"],
                                                         "operations": ["CREATE"], "resources": ["executiontasks"]}]
    assert vap["failurePolicy"] == "Fail"


def test_it_can_be_left_out_and_is_left_out_before_kubernetes_1_30():
    assert not find(render_chart({"admissionPolicy": {"enabled": False}}), "ValidatingAdmissionPolicy")
    older = [doc for doc in yaml.safe_load_all(template(extra=("--kube-version", "1.29.0"))) if doc]
    assert not find(older, "ValidatingAdmissionPolicy") and find(older, "CustomResourceDefinition")


@pytest.mark.parametrize("case", list(VIOLATIONS))
def test_a_violating_task_is_refused_with_the_operators_words(admission, case):
    rules, spec, field, value, accepted = VIOLATIONS[case]
    task, governing = task_manifest(**spec), [policy(f"policy-{case}", **rules)]
    refused = admission.refusals(task, governing, {})
    assert refused == judged(task, governing, {}), "the API server and the operator disagree"
    assert len(refused) == 1 and field in refused[0] and value in refused[0] and accepted in refused[0]
    assert f"ExecutionPolicy policy-{case}" in refused[0]
    assert admission.refusals(task, [policy("no-knob")], {}) == []  # the control: the same task, no knob


@pytest.mark.parametrize("case", list(ALLOWED))
def test_what_a_policy_allows_is_admitted(admission, case):
    rules, spec = ALLOWED[case]
    assert admission.refusals(task_manifest(**spec), [policy(**rules)], {}) == []


@pytest.mark.parametrize("selector, labels", [
    ({"matchLabels": {"tenant": "a"}}, {"tenant": "a"}),
    ({"matchLabels": {"tenant": "a"}}, {"tenant": "b"}),
    ({"matchLabels": {"tenant": "a"}}, {}),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["ci", "dev"]}]}, {"tier": "ci"}),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["ci"]}]}, {}),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["prod"]}]}, {}),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["prod"]}]}, {"tier": "prod"}),
    ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {"tier": ""}),
    ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, {"tier": "x"}),
    ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, {}),
])
def test_only_the_policies_selecting_the_namespace_refuse(admission, selector, labels):
    governing = [policy("strict", namespaceSelector=selector, isolation={"minimum": "VM"})]
    selected = NamespaceSelector.model_validate(selector).selects(labels)
    assert bool(admission.refusals(task_manifest(), governing, labels)) is selected


def test_every_policy_that_refuses_is_named(admission):
    task = task_manifest(image="docker.io/evil/miner:latest", network={"policy": "Full"})
    governing = [policy("images", images={"allowed": ["registry.local/*"]}), policy("network",
                 network={"policies": ["None"]}), policy("lenient")]
    refused = admission.refusals(task, governing, {})
    assert sorted(refused) == sorted(judged(task, governing, {}))
    assert [("ExecutionPolicy images" in r, "ExecutionPolicy network" in r) for r in refused] == [(True, False),
                                                                                                 (False, True)]


def test_no_policy_admits_everything(admission):
    assert admission.refusals(task_manifest(isolation={"minimum": "None", "seccompProfile": "Unconfined"}), [], {}) == []


# --- image signatures: CEL sees the digest and the annotations, not the signature ---------------------------


def _signature_cases():  # type: ignore[no-untyped-def]
    trusted = Publisher("ci-release")
    return cases("registry.local/ci/app", "sha256:" + "5e" * 32, trusted, Publisher("other")), verifying(trusted)


@pytest.mark.parametrize("case", ["unpinned", "unsigned"])
def test_an_unpinned_or_unsigned_image_is_refused_with_the_operators_words(admission, case):
    found, rules = _signature_cases()
    task = task_manifest(image=found[case].image)
    task["metadata"]["annotations"] = found[case].annotations
    governing = [policy("signed", **rules)]
    refused = admission.refusals(task, governing, {})
    assert refused == judged(task, governing, {}) and len(refused) == 1
    assert all(words in refused[0] for words in found[case].words)
    assert admission.refusals(task, [policy("no-knob")], {}) == []  # the control


@pytest.mark.parametrize("case", ["signed", "other-key", "other-digest", "other-repository"])
def test_what_cel_cannot_verify_it_admits_and_leaves_to_the_operator(admission, case):
    """No ECDSA, base64 or JSON in CEL: a pinned image with both annotations passes the API server; the
    operator and the agent judge the signature itself (and refuse all but the signed one)."""
    found, rules = _signature_cases()
    task = task_manifest(image=found[case].image)
    task["metadata"]["annotations"] = found[case].annotations
    governing = [policy("signed", **rules)]
    assert admission.refusals(task, governing, {}) == []
    assert bool(judged(task, governing, {})) is (case != "signed")
