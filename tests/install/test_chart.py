"""The Helm chart and the plain install manifests: what `helm install` and `kubectl apply` users get."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from expbuild_isolation.kube.restricted import violations
from expbuild_isolation.worker.config import WorkerConfig

from .chart import (CHART, HELM, INSTALL_DIR, NO_HELM, RENDER_INSTALL, ROOT, HelmError, find, helm, one, rbac_rules,
                    render_chart, template)

pytestmark = pytest.mark.skipif(HELM is None, reason=NO_HELM)

K8S_VERSION = kubernetes_validate.utils.latest_version()
# Kinds whose schemas kubernetes-validate does not ship (CRDs of other projects): checked by hand below.
NOT_IN_KUBERNETES = {"ServiceMonitor"}
RELEASE = "expbuild-isolation"
OPERATOR = f"{RELEASE}-operator"
AGENT = f"{RELEASE}-agent"

FULL_OPTIONS: dict[str, Any] = {
    "watchNamespaces": ["a", "b"],
    "imagePullSecrets": ["regcred"],
    "operator": {"replicas": 2, "fqdnPolicies": True, "defaultSeccomp": "expbuild-default",
                 "allowedImages": ["registry.local/*", "localhost/*"], "vmRuntimeClass": "kata",
                 "priorityClassName": "system-cluster-critical", "tolerations": [{"operator": "Exists"}]},
    "agent": {"enabled": True, "dockerSocket": True, "privileged": False, "priorityClassName": "system-node-critical",
              "tolerations": [{"operator": "Exists"}]},
    "seccompProfiles": {"installer": {"enabled": True}},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "dashboard": {"enabled": True},
}


@pytest.fixture(scope="module")
def defaults() -> list[dict[str, Any]]:
    return render_chart()


@pytest.fixture(scope="module")
def full() -> list[dict[str, Any]]:
    return render_chart(FULL_OPTIONS)


def schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


def default_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def container(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return one(objects, kind, name)["spec"]["template"]["spec"]["containers"][0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env") or []}


# --- helm itself ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
def test_helm_lint_passes(strict: bool) -> None:
    helm("lint", str(CHART), *(["--strict"] if strict else []))


@pytest.mark.parametrize("values", [None, FULL_OPTIONS], ids=["defaults", "full-options"])
def test_helm_lint_passes_with_values(values: dict[str, Any] | None, tmp_path: Path) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values or {}))
    helm("lint", "--strict", str(CHART), "--values", str(values_file))


@pytest.mark.parametrize("values", [None, FULL_OPTIONS], ids=["defaults", "full-options"])
def test_every_rendered_object_validates_against_kubernetes(values: dict[str, Any] | None) -> None:
    objects = render_chart(values)
    assert objects
    for obj in objects:
        if obj["kind"] in NOT_IN_KUBERNETES:
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_foreign_kinds_have_the_shape_their_operators_expect(full: list[dict[str, Any]]) -> None:
    monitor = one(full, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
    # The peering objects are the operator's to create at startup (controller.run.build), not the chart's.
    assert not find(full, "KopfPeering") and not find(full, "ClusterKopfPeering")


def test_defaults_render_the_operator_only(defaults: list[dict[str, Any]]) -> None:
    kinds = sorted({obj["kind"] for obj in defaults})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "CustomResourceDefinition", "Deployment",
                     "Role", "RoleBinding", "Service", "ServiceAccount", "ValidatingAdmissionPolicy",
                     "ValidatingAdmissionPolicyBinding"]
    assert not find(defaults, "DaemonSet")
    assert [sa["metadata"]["name"] for sa in find(defaults, "ServiceAccount")] == [OPERATOR]


def test_every_namespaced_object_lands_in_the_release_namespace() -> None:
    cluster_scoped = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
                      "ValidatingAdmissionPolicyBinding"}
    for obj in render_chart(FULL_OPTIONS | {"watchNamespaces": []}, namespace="build-infra"):
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"]["namespace"] == "build-infra", obj["metadata"]["name"]


# --- values and their schema ---------------------------------------------------------------------------------

def test_values_yaml_satisfies_its_schema() -> None:
    jsonschema.Draft7Validator.check_schema(schema())
    jsonschema.validate(default_values(), schema())
    jsonschema.validate(FULL_OPTIONS, schema())


def test_every_object_in_the_schema_rejects_unknown_keys() -> None:
    def walk(node: dict[str, Any], where: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{where} accepts unknown keys"
        for key, child in (node.get("properties") or {}).items():
            walk(child, f"{where}.{key}")
        for child in node.get("anyOf") or []:
            walk(child, where)
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{where}[]")
    walk(schema(), "values")


BAD_VALUES = [
    pytest.param({"image": {"tag": 5}}, "tag", id="image-tag-not-a-string"),
    pytest.param({"operator": {"replicas": -1}}, "replicas", id="negative-replicas"),
    pytest.param({"operator": {"replicas": 0}}, "replicas", id="zero-replicas"),
    pytest.param({"agnet": {}}, "agnet", id="typo-at-top-level"),
    pytest.param({"agent": {"enabeld": True}}, "enabeld", id="typo-nested"),
    pytest.param({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy", id="pull-policy-enum"),
    pytest.param({"operator": {"defaultSeccomp": "Unconfined"}}, "defaultSeccomp", id="seccomp-enum"),
    pytest.param({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces", id="namespace-pattern"),
    pytest.param({"agent": {"workDir": "relative/dir"}}, "workDir", id="relative-work-dir"),
]


@pytest.mark.parametrize(("values", "key"), BAD_VALUES)
def test_bad_values_are_rejected_by_the_schema_naming_the_key(values: dict[str, Any], key: str) -> None:
    merged = default_values()
    for section, value in values.items():
        merged[section] = merged[section] | value if isinstance(merged.get(section), dict) else value
    with pytest.raises(jsonschema.ValidationError) as caught:
        jsonschema.validate(merged, schema())
    error = caught.value
    assert key in str(error.message) or key in [str(p) for p in error.absolute_path]


@pytest.mark.parametrize(("values", "key"), BAD_VALUES)
def test_bad_values_make_helm_template_fail_naming_the_key(values: dict[str, Any], key: str) -> None:
    with pytest.raises(HelmError) as caught:
        template(values)
    assert "values don't meet the specifications of the schema" in str(caught.value)
    assert key in str(caught.value)


def test_the_default_agent_config_is_a_valid_worker_config() -> None:
    config = WorkerConfig.model_validate(tomllib.loads(default_values()["agent"]["config"]))
    assert config.executor.type == "namespace"
    assert str(config.work_dir) == default_values()["agent"]["workDir"]


# --- one source of truth ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("crd", ["executiontask.yaml", "executionpolicy.yaml"])
def test_the_chart_crd_file_is_a_byte_copy_of_crds(crd: str) -> None:
    assert (CHART / "files" / crd).read_bytes() == (ROOT / "crds" / crd).read_bytes()


@pytest.mark.parametrize("profile", ["expbuild-default.json", "expbuild-strict.json"])
def test_the_chart_seccomp_profiles_are_byte_copies_of_manifests(profile: str) -> None:
    assert (CHART / "files" / "seccomp" / profile).read_bytes() == (ROOT / "manifests" / "seccomp" / profile).read_bytes()


def test_the_seccomp_configmap_carries_the_profiles_unchanged(defaults: list[dict[str, Any]]) -> None:
    data = one(defaults, "ConfigMap", f"{RELEASE}-seccomp-profiles")["data"]
    assert set(data) == {"expbuild-default.json", "expbuild-strict.json"}
    for name, text in data.items():
        assert text == (ROOT / "manifests" / "seccomp" / name).read_text()


@pytest.mark.parametrize("name, crd", [("executiontasks.expbuild.io", "executiontask.yaml"),
                                       ("executionpolicies.expbuild.io", "executionpolicy.yaml")])
def test_the_rendered_crd_equals_crds_apart_from_helm_metadata(defaults: list[dict[str, Any]], name: str,
                                                               crd: str) -> None:
    rendered = one(defaults, "CustomResourceDefinition", name)
    source = yaml.safe_load((ROOT / "crds" / crd).read_text())
    meta = rendered["metadata"]
    assert meta["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert source["metadata"]["labels"].items() <= meta["labels"].items()
    assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
    stripped = {**rendered, "metadata": {"name": meta["name"], "labels": source["metadata"]["labels"]}}
    assert stripped == source


def test_the_crd_can_be_left_out() -> None:
    assert not find(render_chart({"crd": {"install": False}}), "CustomResourceDefinition")


# --- the operator ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [None, FULL_OPTIONS], ids=["defaults", "full-options"])
def test_the_operator_pod_passes_pod_security_restricted(values: dict[str, Any] | None) -> None:
    pod = one(render_chart(values), "Deployment", OPERATOR)["spec"]["template"]["spec"]
    assert violations(pod) == []


def test_the_operator_runs_hardened_with_probes_and_metrics(defaults: list[dict[str, Any]]) -> None:
    deployment = one(defaults, "Deployment", OPERATOR)
    pod = deployment["spec"]["template"]["spec"]
    c = pod["containers"][0]
    ctx = c["securityContext"]
    assert (ctx["runAsNonRoot"], ctx["runAsUser"], ctx["readOnlyRootFilesystem"]) == (True, 10001, True)
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert set(c["resources"]) == {"requests", "limits"}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert "--liveness=http://0.0.0.0:8081/healthz" in c["args"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    env = env_of(c)
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["EXPBUILD_SUPERVISOR_IMAGE"] == c["image"] == "ghcr.io/expbuild/expbuild-isolation:0.1.0"
    assert env["EXPBUILD_SUPERVISOR_BINARY"] == "/bin/busybox"
    assert env["EXPBUILD_METRICS_PORT"] == "8080"
    assert "EXPBUILD_DEFAULT_SECCOMP" not in env
    assert pod["serviceAccountName"] == OPERATOR


def test_the_operator_env_is_what_its_config_reads(full: list[dict[str, Any]]) -> None:
    from expbuild_isolation.kube.config import OperatorConfig
    env = {k: v for k, v in env_of(container(full, "Deployment", OPERATOR)).items() if isinstance(v, str)}
    config = OperatorConfig.from_env(env)
    assert config.allowed_images == ["registry.local/*", "localhost/*"]
    assert (config.vm_runtime_class, config.fqdn_policies, config.default_seccomp) == ("kata", True, "expbuild-default")
    assert config.supervisor_image == "ghcr.io/expbuild/expbuild-isolation:0.1.0"
    assert OperatorConfig.from_env({k: v for k, v in env_of(container(render_chart(), "Deployment", OPERATOR)).items()
                                    if isinstance(v, str)}) == OperatorConfig(
        supervisor_image="ghcr.io/expbuild/expbuild-isolation:0.1.0")


def test_the_default_seccomp_needs_a_profile_installer() -> None:
    asked = {"operator": {"defaultSeccomp": "expbuild-default"}}
    assert "EXPBUILD_DEFAULT_SECCOMP" not in env_of(container(render_chart(asked), "Deployment", OPERATOR))
    for installer in ({"agent": {"enabled": True}}, {"seccompProfiles": {"installer": {"enabled": True}}}):
        env = env_of(container(render_chart(asked | installer), "Deployment", OPERATOR))
        assert env["EXPBUILD_DEFAULT_SECCOMP"] == "expbuild-default"


def test_one_replica_is_standalone_and_ships_no_peering(defaults: list[dict[str, Any]]) -> None:
    deployment = one(defaults, "Deployment", OPERATOR)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "--standalone" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [o for o in defaults if "kopf.dev" in json.dumps(o)]


def test_more_replicas_use_peering_with_its_crds_and_rbac() -> None:
    objects = render_chart({"operator": {"replicas": 3}})
    deployment = one(objects, "Deployment", OPERATOR)
    assert deployment["spec"]["replicas"] == 3
    assert f"--peering={RELEASE}" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    crds = {c["metadata"]["name"] for c in find(objects, "CustomResourceDefinition")}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= crds
    granted = {(r, tuple(rule["verbs"])) for _, rule in rbac_rules(objects) for r in rule["resources"]}
    assert ("clusterkopfpeerings", ("list", "watch", "create", "patch")) in granted


def test_watched_namespaces_become_operator_arguments(full: list[dict[str, Any]]) -> None:
    args = container(full, "Deployment", OPERATOR)["args"]
    assert "--namespace=a" in args and "--namespace=b" in args
    agent_args = container(full, "DaemonSet", AGENT)["args"]
    assert "--task-namespace=a" in agent_args and "--task-namespace=b" in agent_args


# --- RBAC ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [None, FULL_OPTIONS], ids=["defaults", "full-options"])
def test_no_rbac_rule_uses_wildcards_or_touches_secrets(values: dict[str, Any] | None) -> None:
    rules = rbac_rules(render_chart(values))
    assert rules
    for role, rule in rules:
        where = f"{role['kind']} {role['metadata']['name']}"
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert "*" not in (rule.get(field) or []), f"{where} uses * in {field}"
        assert "secrets" not in rule.get("resources", []), f"{where} grants secrets"
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), where


@pytest.mark.parametrize("values", [None, FULL_OPTIONS], ids=["defaults", "full-options"])
def test_nothing_is_bound_to_a_built_in_role(values: dict[str, Any] | None) -> None:
    own = {o["metadata"]["name"] for o in render_chart(values) if o["kind"] in ("Role", "ClusterRole")}
    for binding in find(render_chart(values), "RoleBinding") + find(render_chart(values), "ClusterRoleBinding"):
        assert binding["roleRef"]["name"] in own


def test_cilium_policies_are_granted_only_when_asked(defaults: list[dict[str, Any]], full: list[dict[str, Any]]) -> None:
    def grants_cilium(objects: list[dict[str, Any]]) -> bool:
        return any("ciliumnetworkpolicies" in rule["resources"] for _, rule in rbac_rules(objects))
    assert not grants_cilium(defaults)
    assert grants_cilium(full)


def test_namespaced_mode_renders_roles_in_each_watched_namespace(full: list[dict[str, Any]]) -> None:
    task_resources = {"executiontasks", "executiontasks/status", "jobs", "pods", "pods/log", "configmaps"}
    for cluster_role in find(full, "ClusterRole"):
        for rule in cluster_role["rules"]:
            assert not task_resources & set(rule["resources"]), cluster_role["metadata"]["name"]
            if rule["resources"] != ["namespaces"] and "kopf.dev" not in rule["apiGroups"]:
                assert set(rule["verbs"]) <= {"get", "list", "watch"}
    for namespace in ("a", "b"):
        names = {r["metadata"]["name"] for r in find(full, "Role") if r["metadata"]["namespace"] == namespace}
        assert names == {OPERATOR, AGENT}
        bound = {b["roleRef"]["name"] for b in find(full, "RoleBinding") if b["metadata"]["namespace"] == namespace}
        assert bound == {OPERATOR, AGENT}


def test_service_accounts_and_bindings_match(full: list[dict[str, Any]]) -> None:
    accounts = {sa["metadata"]["name"] for sa in find(full, "ServiceAccount")}
    assert accounts == {OPERATOR, AGENT}
    for binding in find(full, "RoleBinding") + find(full, "ClusterRoleBinding"):
        for subject in binding["subjects"]:
            assert subject["name"] in accounts and subject["namespace"] == "expbuild-system"


# --- the node agent --------------------------------------------------------------------------------------------

def test_the_agent_daemonset_has_what_its_docstring_asks_for(full: list[dict[str, Any]]) -> None:
    daemonset = one(full, "DaemonSet", AGENT)
    pod = daemonset["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["args"][:4] == ["agent", "--config=/etc/expbuild/worker.toml", "--metrics-port=8081",
                             "--seccomp-dir=/var/lib/kubelet/seccomp/profiles"]
    env = env_of(c)
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths == {"cgroup": "/sys/fs/cgroup", "kubelet-seccomp": "/var/lib/kubelet/seccomp",
                          "work": "/var/lib/expbuild/work", "docker-socket": "/var/run/docker.sock"}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert not mounts["cgroup"].get("readOnly") and not mounts["kubelet-seccomp"].get("readOnly")
    assert mounts["work"]["mountPath"] == "/var/lib/expbuild/work"
    assert pod["serviceAccountName"] == AGENT and pod["priorityClassName"] == "system-node-critical"
    config = one(full, "ConfigMap", f"{AGENT}-config")["data"]["worker.toml"]
    assert config == default_values()["agent"]["config"]


def test_the_unprivileged_agent_adds_only_the_capabilities_it_needs() -> None:
    pod = one(render_chart({"agent": {"enabled": True, "privileged": False}}), "DaemonSet",
              AGENT)["spec"]["template"]["spec"]
    ctx = pod["containers"][0]["securityContext"]
    assert ctx == {"runAsUser": 0, "capabilities": {"add": ["SYS_ADMIN", "NET_ADMIN"]},
                   "seccompProfile": {"type": "Unconfined"}, "appArmorProfile": {"type": "Unconfined"}}
    fewer = one(render_chart({"agent": {"enabled": True, "privileged": False, "addCapabilities": ["SYS_ADMIN"]}}),
                "DaemonSet", AGENT)["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert fewer["capabilities"] == {"add": ["SYS_ADMIN"]}


def test_the_kubelet_root_directory_is_a_value() -> None:
    values = {"kubeletRootDir": "/var/lib/k0s/kubelet", "agent": {"enabled": True},
              "seccompProfiles": {"installer": {"enabled": True}}}
    objects = render_chart(values)
    for name in (AGENT, f"{RELEASE}-seccomp-installer"):
        pod = one(objects, "DaemonSet", name)["spec"]["template"]["spec"]
        paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
        assert paths["kubelet-seccomp"] == "/var/lib/k0s/kubelet/seccomp", name


def test_the_docker_socket_is_mounted_only_when_asked() -> None:
    pod = one(render_chart({"agent": {"enabled": True}}), "DaemonSet", AGENT)["spec"]["template"]["spec"]
    assert "docker-socket" not in {v["name"] for v in pod["volumes"]}
    assert pod["containers"][0]["securityContext"] == {"runAsUser": 0, "privileged": True}


def test_the_seccomp_installer_copies_the_configmap_into_the_kubelet_dir(full: list[dict[str, Any]]) -> None:
    pod = one(full, "DaemonSet", f"{RELEASE}-seccomp-installer")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"][0] == "/bin/busybox" and "/host/seccomp/profiles" in c["command"][-1]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["profiles"]["configMap"]["name"] == f"{RELEASE}-seccomp-profiles"
    assert volumes["kubelet-seccomp"]["hostPath"]["path"] == "/var/lib/kubelet/seccomp"
    assert pod["automountServiceAccountToken"] is False


# --- observability ---------------------------------------------------------------------------------------------

def test_the_metrics_service_is_always_there(defaults: list[dict[str, Any]]) -> None:
    service = one(defaults, "Service", f"{OPERATOR}-metrics")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    assert not find(defaults, "ServiceMonitor")


def test_the_dashboard_charts_every_metric_the_code_exports(full: list[dict[str, Any]]) -> None:
    from expbuild_isolation import metrics
    cm = one(full, "ConfigMap", f"{RELEASE}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["expbuild-isolation.json"])
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    exported = [metrics.TASKS_TOTAL, metrics.TASK_DURATION, metrics.TASK_QUEUE, metrics.TASKS_RUNNING,
                metrics.RECONCILE_ERRORS, metrics.EXECUTOR_HEALTHY]
    for collector in exported:
        name = collector._name  # prometheus_client strips _total from counters
        assert name in exprs, name
        for label in collector._labelnames:
            assert label in exprs, (name, label)


# --- NOTES -----------------------------------------------------------------------------------------------------

def render_notes(values: dict[str, Any] | None, tmp_path: Path) -> str:
    """NOTES.txt as `helm install` prints it (helm template skips it: render a copy as a normal template)."""
    chart = tmp_path / "chart"
    subprocess.run(["cp", "-r", str(CHART), str(chart)], check=True)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "zz-notes.yaml").write_text(
        '{{- define "test.notes" }}' + notes + '{{- end }}\nnotes: {{ include "test.notes" . | quote }}\n')
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values or {}))
    out = helm("template", RELEASE, str(chart), "--namespace", "expbuild-system", "--values", str(values_file),
               "--show-only", "templates/zz-notes.yaml").stdout
    return yaml.safe_load(out)["notes"]


def test_notes_tell_how_to_run_the_first_task(tmp_path: Path) -> None:
    hello = yaml.safe_load((ROOT / "manifests" / "examples" / "hello.yaml").read_text())
    notes = render_notes(None, tmp_path)
    assert "kubectl apply -n default -f manifests/examples/hello.yaml" in notes
    assert f"kubectl get xt {hello['metadata']['name']} -n default -w" in notes
    assert "privileged" not in notes


def test_notes_say_the_agent_namespace_needs_privileged(tmp_path: Path) -> None:
    notes = render_notes({"agent": {"enabled": True}, "watchNamespaces": ["ci"]}, tmp_path)
    assert "pod-security.kubernetes.io/enforce=privileged" in notes
    assert "kubectl get xt hello -n ci -w" in notes


# --- plain manifests -------------------------------------------------------------------------------------------

def test_install_manifests_are_the_render_script_output(tmp_path: Path) -> None:
    subprocess.run(["bash", str(RENDER_INSTALL), str(tmp_path)], check=True, capture_output=True)
    rendered = {p.name: p.read_text() for p in sorted(tmp_path.iterdir())}
    committed = {p.name: p.read_text() for p in sorted(INSTALL_DIR.iterdir())}
    assert rendered.keys() == committed.keys()
    for name in rendered:
        assert committed[name] == rendered[name], f"manifests/install/{name} is stale: run helm/render-install.sh"


def test_install_manifests_apply_in_order_and_validate() -> None:
    files = sorted(INSTALL_DIR.glob("*.yaml"))
    objects = [doc for f in files for doc in yaml.safe_load_all(f.read_text()) if doc]
    assert [o["kind"] for o in objects[:2]] == ["Namespace", "CustomResourceDefinition"]
    namespace = objects[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        if obj["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                               "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
            assert obj["metadata"]["namespace"] == namespace["metadata"]["name"]
    assert not [o for o in objects if o["kind"] == "DaemonSet"]
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert violations(deployment["spec"]["template"]["spec"]) == []


def test_the_operator_grants_match_what_its_code_calls(defaults: list[dict[str, Any]]) -> None:
    """Pinned from controller/cluster.py, the handlers and kopf's needs; test_rbac.py checks them against a recording."""
    role = one(defaults, "ClusterRole", OPERATOR)
    granted = {(group, resource): sorted(rule["verbs"]) for rule in role["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]}
    assert granted == {
        ("expbuild.io", "executiontasks"): sorted(["get", "list", "watch", "patch"]),
        ("expbuild.io", "executiontasks/status"): ["patch"],
        ("batch", "jobs"): sorted(["get", "list", "watch", "create", "delete"]),
        ("", "pods"): ["list", "watch"],
        ("", "pods/log"): ["get"],
        ("", "configmaps"): ["create", "get"],
        ("networking.k8s.io", "networkpolicies"): ["create", "get", "list", "patch", "watch"],
        ("", "events"): ["create"],
        ("coordination.k8s.io", "leases"): ["get"],
    }
