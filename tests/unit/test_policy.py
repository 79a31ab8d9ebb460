"""The ExecutionPolicy model and CRD, and the pure judge: selection, the strictest combination, violations."""

import ipaddress
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from expbuild_isolation.api.crd import build_policy_crd, render_policy_crd_yaml
from expbuild_isolation.api.judge import combine, judge, pinned, selecting
from expbuild_isolation.api.policy import ExecutionPolicy
from expbuild_isolation.api.task import ExecutionTask, IsolationLevel
from pydantic import ValidationError

from .manifests import task as task_manifest
from .policy_cases import ALLOWED, VIOLATIONS
from .test_crd import ApiServer, _walk

ROOT = Path(__file__).resolve().parents[2]
POLICY_CRD = ROOT / "crds" / "executionpolicy.yaml"
EXAMPLE = ROOT / "manifests" / "examples" / "policy.yaml"
DIGEST = "a" * 64


def policy(name="p", **spec):
    return ExecutionPolicy.model_validate({"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionPolicy",
                                           "metadata": {"name": name}, "spec": spec})


def task(**spec):
    return ExecutionTask.model_validate(task_manifest(**spec))


# --- the CRD -----------------------------------------------------------------------------------------------


def test_committed_policy_crd_matches_the_models():
    assert POLICY_CRD.read_text() == render_policy_crd_yaml(), (
        "crds/executionpolicy.yaml is stale: run `expbuild-isolation crd --policy > crds/executionpolicy.yaml`")


def test_policy_crd_validates_against_the_kubernetes_schema():
    kubernetes_validate.validate(build_policy_crd(), "1.30", strict=True)


def test_policy_crd_is_cluster_scoped_and_structural():
    crd = build_policy_crd()
    assert crd["spec"]["scope"] == "Cluster"
    for node in _walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]):
        assert "$ref" not in node and "title" not in node
        if "anyOf" in node:  # only the int-or-string quantity pair, and nothing inside its branches
            assert node["x-kubernetes-int-or-string"] is True
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}]
        else:
            assert "type" in node, node


@pytest.fixture(scope="module")
def policy_api_server():
    return ApiServer(build_policy_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_the_example_policy_is_valid_and_admitted(policy_api_server):
    doc = yaml.safe_load(EXAMPLE.read_text())
    assert policy_api_server.admit(doc) == []
    example = ExecutionPolicy.model_validate(doc)
    assert example.spec.isolation.minimum is IsolationLevel.CONTAINER


@pytest.mark.parametrize("page", ["README.md", "docs/security.md"])
def test_the_docs_show_the_example_policy(page):
    """One administrator's example: the README and the security page show manifests/examples/policy.yaml."""
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / page).read_text(), flags=re.S)
    shown = [yaml.safe_load(block) for block in blocks if "kind: ExecutionPolicy" in block]
    assert shown == [yaml.safe_load(EXAMPLE.read_text())]


@pytest.mark.parametrize("spec, field", [
    ({"isolation": {"minimum": "Paranoid"}}, "isolation.minimum"),
    ({"isolation": {"belowMinimum": "Ignore"}}, "belowMinimum"),
    ({"isolation": {"executors": ["lxc"]}}, "executors"),
    ({"maxResources": {"memory": "8GB"}}, "memory"),
    ({"maxResources": {"timeout": "1d"}}, "timeout"),
    ({"network": {"restrictedCidrs": ["example.com"]}}, "restrictedCidrs"),
    ({"images": {"allowed": ["registry.local/[a-z]*"]}}, "allowed"),
    ({"maxUnfinishedTasks": 0}, "maxUnfinishedTasks"),
    ({"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Near"}]}}, "operator"),
    ({"quota": 3}, "quota"),
])
def test_a_bad_policy_is_refused_by_the_models_and_the_api_server(policy_api_server, spec, field):
    doc = {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionPolicy", "metadata": {"name": "p"}, "spec": spec}
    with pytest.raises(ValidationError) as caught:
        ExecutionPolicy.model_validate(doc)
    assert field.split(".")[-1] in str(caught.value)
    if field != "quota":  # (unknown fields: the API server prunes them instead)
        assert policy_api_server.admit(doc), f"the API server would admit {spec}"


def test_a_cidr_the_schema_cannot_judge_is_refused_by_the_models():
    with pytest.raises(ValidationError, match="is not a CIDR"):
        policy(network={"restrictedCidrs": ["10.0.0.300/8"]})


# --- which policies govern a namespace -----------------------------------------------------------------------


@pytest.mark.parametrize("selector, labels, selected", [
    ({}, {}, True),
    ({"matchLabels": {"tenant": "a"}}, {"tenant": "a", "x": "y"}, True),
    ({"matchLabels": {"tenant": "a"}}, {"tenant": "b"}, False),
    ({"matchLabels": {"tenant": "a"}}, {}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["ci", "dev"]}]}, {"tier": "ci"}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["ci"]}]}, {}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["prod"]}]}, {}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["prod"]}]}, {"tier": "prod"}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {"tier": ""}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, {"tier": "x"}, False),
    ({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]}, {"a": "1"}, False),
])
def test_a_policy_selects_namespaces_by_label(selector, labels, selected):
    assert bool(selecting([policy(namespaceSelector=selector)], labels)) is selected


def test_a_policy_that_does_not_select_the_namespace_does_not_judge_its_tasks():
    strict = policy(namespaceSelector={"matchLabels": {"tenant": "a"}}, isolation={"minimum": "VM"})
    assert judge(task(), [strict], {"tenant": "b"}).allowed
    assert not judge(task(), [strict], {"tenant": "a"}).allowed


# --- several policies combine to the strictest, knob by knob --------------------------------------------------


def test_the_highest_refusing_floor_and_the_highest_raise_win():
    rules = combine([policy("a", isolation={"minimum": "Process"}),
                     policy("b", isolation={"minimum": "Container"}),
                     policy("c", isolation={"minimum": "Filesystem", "belowMinimum": "Raise"}),
                     policy("d", isolation={"minimum": "Process", "belowMinimum": "Raise"})])
    assert (rules.refuse_below.value, rules.refuse_below.policy) == (IsolationLevel.CONTAINER, "b")
    assert (rules.raise_to.value, rules.raise_to.policy) == (IsolationLevel.FILESYSTEM, "c")


@pytest.mark.parametrize("knob, section, key, first, second, strictest", [
    ("allowed_executors", "isolation", "executors", ["auto", "job", "docker"], ["job", "docker", "podman"],
     {"job", "docker"}),
    ("allowed_runtime_classes", "isolation", "runtimeClasses", ["gvisor", "kata"], ["kata"], {"kata"}),
    ("allowed_seccomp_profiles", "isolation", "seccompProfiles", ["RuntimeDefault", "expbuild-strict"],
     ["expbuild-strict"], {"expbuild-strict"}),
    ("allowed_network_policies", "network", "policies", ["None", "Restricted", "Full"], ["None", "Localhost"],
     {"None"}),
])
def test_allow_lists_intersect(knob, section, key, first, second, strictest):
    rules = combine([policy("a", **{section: {key: first}}), policy("b", **{section: {key: second}})])
    assert getattr(rules, knob) == strictest
    assert getattr(combine([policy("a", **{section: {key: first}}), policy("b")]), knob) == set(first)
    assert getattr(combine([policy("a"), policy("b")]), knob) is None  # nobody restricts it


def test_restricted_cidrs_intersect_to_the_narrower_of_each_overlap():
    rules = combine([policy("a", network={"restrictedCidrs": ["10.0.0.0/8", "192.168.0.0/16"]}),
                     policy("b", network={"restrictedCidrs": ["10.20.0.0/16", "172.16.0.0/12"]})])
    assert rules.allowed_cidrs == [ipaddress.ip_network("10.20.0.0/16")]


@pytest.mark.parametrize("key, first, second, strictest, policy_name", [
    ("cpu", "4", "500m", 0.5, "b"),
    ("memory", "8Gi", "16Gi", 8 << 30, "a"),
    ("disk", 1 << 30, "2Gi", 1 << 30, "a"),
    ("pids", 100, 64, 64, "b"),
    ("timeout", "1h", "90m", 3600, "a"),
])
def test_caps_take_the_lowest(key, first, second, strictest, policy_name):
    rules = combine([policy("a", maxResources={key: first}), policy("b", maxResources={key: second})])
    bound = getattr(rules, f"max_{key}")
    assert (bound.value, bound.policy) == (strictest, policy_name)


def test_digest_pinning_if_any_policy_asks_and_the_smallest_quota():
    rules = combine([policy("a", images={"requireDigest": False}, maxUnfinishedTasks=10),
                     policy("b", images={"requireDigest": True}, maxUnfinishedTasks=3)])
    assert (rules.require_digest.value, rules.require_digest.policy) == (True, "b")
    assert (rules.max_unfinished_tasks.value, rules.max_unfinished_tasks.policy) == (3, "b")
    assert combine([policy("a")]).require_digest is None


def test_image_patterns_must_all_match():
    both = [policy("a", images={"allowed": ["registry.local/*"]}), policy("b", images={"allowed": ["*/ci/*"]})]
    assert judge(task(image="registry.local/ci/gcc:13"), both, {}).allowed
    refused = judge(task(image="registry.local/prod/gcc:13"), both, {})
    assert [(v.field, v.policy) for v in refused.violations] == [("spec.image", "b")]


# --- judging one task: every knob names the field, the value and the policy ------------------------------------




@pytest.mark.parametrize("rules, spec, field, value, accepted", VIOLATIONS.values(), ids=list(VIOLATIONS))
def test_each_knob_refuses_naming_field_value_and_policy(rules, spec, field, value, accepted):
    verdict = judge(task(**spec), [policy("team-a", **rules)], {})
    assert [(v.field, v.value, v.policy) for v in verdict.violations] == [(field, value, "team-a")]
    text = verdict.refusal()
    assert field in text and value in text and "ExecutionPolicy team-a" in text and accepted in text
    assert judge(task(**spec), [policy("team-a")], {}).allowed  # the same task passes without the knob


@pytest.mark.parametrize("rules, spec", ALLOWED.values(), ids=list(ALLOWED))
def test_what_a_policy_allows_passes(rules, spec):
    assert judge(task(**spec), [policy(**rules)], {}).violations == ()


def test_a_raising_policy_raises_the_floor_and_says_so():
    verdict = judge(task(isolation={"minimum": "None"}), [policy("floor", isolation={"minimum": "Container",
                                                                                    "belowMinimum": "Raise"})], {})
    assert verdict.allowed
    assert (verdict.floor.value, verdict.floor.policy) == (IsolationLevel.CONTAINER, "floor")
    assert verdict.raised(IsolationLevel.NONE) == ("spec.isolation.minimum None raised to Container by "
                                                   "ExecutionPolicy floor")
    assert judge(task(isolation={"minimum": "VM"}), [policy(isolation={"minimum": "Container",
                                                                        "belowMinimum": "Raise"})], {}).floor is None


def test_a_raised_floor_cannot_keep_seccomp_unconfined():
    verdict = judge(task(isolation={"minimum": "None", "seccompProfile": "Unconfined"}),
                    [policy("floor", isolation={"minimum": "Process", "belowMinimum": "Raise"})], {})
    assert [(v.field, v.policy) for v in verdict.violations] == [("spec.isolation.seccompProfile", "floor")]


def test_every_policy_that_refuses_is_named():
    verdict = judge(task(isolation={"executor": "host", "minimum": "None"}),
                    [policy("a", isolation={"executors": ["job"]}), policy("b", isolation={"executors": ["docker"]}),
                     policy("c", isolation={"executors": ["host"]})], {})
    assert [v.policy for v in verdict.violations] == ["a", "b"]
    assert verdict.policies == ("a", "b", "c")


def test_pinned_images():
    assert pinned(f"registry.local/gcc@sha256:{DIGEST}")
    assert pinned(f"registry.local:5000/gcc:13@sha256:{DIGEST}")
    assert not pinned("registry.local/gcc:13")
    assert not pinned(f"registry.local/gcc@sha256:{DIGEST[:-1]}")
    assert not pinned(f"registry.local/gcc@sha256:{DIGEST.upper()}")


def test_the_cli_prints_the_policy_crd(capsys):
    from expbuild_isolation.cli import main

    assert main(["crd", "--policy"]) == 0
    assert capsys.readouterr().out == render_policy_crd_yaml()
