"""Everything rendered validates against the Kubernetes schemas and passes PSS restricted."""

from __future__ import annotations

import pytest

from expbuild_isolation.kube import render, restricted
from expbuild_isolation.kube.config import OperatorConfig

from .conftest import REPRESENTATIVE, make_task, validate_k8s

VARIANTS = {
    **REPRESENTATIVE,
    "long-name": {"command": ["true"], "network": {"policy": "Localhost"}},
    "custom-seccomp": {"command": ["true"], "isolation": {"seccompProfile": "Localhost/x/y.json"}},
    "inputs-only-configmaps": {"command": ["true"], "inputs": [{"path": "a", "configMap": {"name": "cm"}}]},
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_rendered_object_is_a_valid_kubernetes_object(name):
    task_name = "t" * 200 if name == "long-name" else name
    task = make_task(task_name, **VARIANTS[name])
    objects = render.objects_for(task, OperatorConfig(vm_runtime_class="kata"))
    assert objects[-1]["kind"] == "Job"
    for obj in objects:
        validate_k8s(obj)
        assert len(obj["metadata"]["name"]) <= 63


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_pod_passes_the_restricted_profile(name):
    job = render.render_job(make_task(name, **VARIANTS[name]), OperatorConfig())
    assert restricted.violations(job["spec"]["template"]["spec"]) == []


def test_the_restricted_check_catches_what_it_should():
    pod = render.render_pod_spec(make_task(), OperatorConfig())
    pod["hostNetwork"] = True
    pod["initContainers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["containers"][0]["securityContext"]["capabilities"] = {"add": ["SYS_ADMIN"]}
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    found = restricted.violations(pod)
    assert "spec.hostNetwork must not be true" in found
    assert "initContainers[prepare]: allowPrivilegeEscalation must be false" in found
    assert "containers[task]: capabilities must drop ALL" in found
    assert "containers[task]: may add only NET_BIND_SERVICE" in found
    assert any("hostPath" in item for item in found)


def test_an_unconfined_pod_is_reported_as_not_restricted():
    task = make_task(isolation={"minimum": "None", "seccompProfile": "Unconfined"})
    pod = render.render_pod_spec(task, OperatorConfig())
    assert "spec.securityContext.seccompProfile must not be Unconfined" in restricted.violations(pod)
