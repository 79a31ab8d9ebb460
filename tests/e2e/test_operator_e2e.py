"""The operator against a real cluster (KUBECONFIG, or a throwaway kind cluster: conftest.py, kind.py): apply the
CRD and the hello example, wait for Succeeded.

Skipped (with the reason) when no cluster answers. The operator runs in-process
under kopf.testing.KopfRunner; the cluster must be able to pull or already
hold the example's image and the supervisor image (EXPBUILD_SUPERVISOR_IMAGE).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "executiontask.yaml"
HELLO = ROOT / "manifests" / "examples" / "hello.yaml"


def _cluster(why: str = "", *, required: bool = False):
    try:
        import kubernetes
        kubernetes.config.load_kube_config()
        api = kubernetes.client.ApiClient()
        kubernetes.client.VersionApi(api).get_code(_request_timeout=5)
        return api
    except Exception as exc:  # no kubeconfig, unreachable, unauthorized: all mean "no cluster here"
        reason = f"no Kubernetes cluster reachable from the kubeconfig ({why or 'KUBECONFIG'}; " \
                 f"{type(exc).__name__}: {exc})"[:400]
        if required:
            pytest.fail(reason)
        pytest.skip(reason)


def test_the_hello_example_succeeds(cluster, namespace):
    import kubernetes
    from kopf.testing import KopfRunner

    kubernetes.utils.create_from_yaml(cluster, str(CRD)) if not _crd_exists(cluster) else None
    task = yaml.safe_load(HELLO.read_text())
    task["metadata"]["namespace"] = namespace
    custom = kubernetes.client.CustomObjectsApi(cluster)
    args = ["run", "--standalone", "--namespace", namespace, "-m", "tests.e2e.operator_main"]
    with KopfRunner(args, timeout=180) as runner:
        custom.create_namespaced_custom_object("expbuild.io", "v1alpha1", namespace, "executiontasks", task)
        deadline = time.monotonic() + 150
        phase = None
        while time.monotonic() < deadline:
            obj = custom.get_namespaced_custom_object("expbuild.io", "v1alpha1", namespace, "executiontasks",
                                                      task["metadata"]["name"])
            phase = (obj.get("status") or {}).get("phase")
            if phase in {"Succeeded", "Failed", "TimedOut", "Error", "Cancelled"}:
                break
            time.sleep(1)
    assert runner.exception is None
    assert phase == "Succeeded", obj.get("status")
    assert obj["status"]["executor"] == "job" and obj["status"]["exitCode"] == 0


def _crd_exists(api) -> bool:
    import kubernetes
    try:
        kubernetes.client.ApiextensionsV1Api(api).read_custom_resource_definition("executiontasks.expbuild.io")
        return True
    except kubernetes.client.ApiException:
        return False
