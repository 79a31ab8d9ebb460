"""Builders for tasks and the Kubernetes schema check shared by the kube tests."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from expbuild_isolation.api.task import ExecutionTask
from expbuild_isolation.kube.config import OperatorConfig

K8S_VERSION = kubernetes_validate.utils.latest_version()


def make_task(name: str = "compile-42", namespace: str = "ci", *, uid: str = "0b7c0e6a-1f1e-4d1a-9a55-5c6f2f1c0001",
              generation: int = 1, status: dict[str, Any] | None = None, **spec: Any) -> ExecutionTask:
    body: dict[str, Any] = {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask",
                            "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": generation},
                            "spec": {"image": "localhost/busybox:latest", "command": ["sh", "-c", "echo hi"]} | spec}
    if status:
        body["status"] = status
    return ExecutionTask.model_validate(body)


def validate_k8s(obj: dict[str, Any]) -> None:
    """Raise unless ``obj`` validates against the Kubernetes OpenAPI schema (strict: no unknown fields)."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# Three tasks that between them touch every branch of rendering a user meets.
REPRESENTATIVE: dict[str, dict[str, Any]] = {
    "hello": {"command": ["echo", "hello"]},
    "compile": {
        "command": ["sh", "-c", "make -j2 all"], "env": [{"name": "CC", "value": "gcc"}], "workingDir": "src",
        "inputs": [{"path": "src/Makefile", "content": "all:\n\techo built > out/app\n"},
                   {"path": "src/run.sh", "content": "#!/bin/sh\necho run\n", "executable": True},
                   {"path": "src/lib", "configMap": {"name": "sources"}}],
        "outputs": {"paths": ["src/out/app", "src/out/report.txt"]},
        "timeout": "90s", "resources": {"cpu": "2", "memory": "2Gi", "disk": "1Gi", "pids": 128},
        "network": {"policy": "Restricted", "allow": ["10.20.0.0/16:443", "192.168.1.7"]},
        "isolation": {"seccompProfile": "expbuild-strict", "runAsUser": 1000},
    },
    "vm-test": {
        "image": "registry.local/ci/test-runner:1.2", "imagePullPolicy": "Always",
        "command": ["/usr/bin/pytest", "-q"], "timeout": "10.5s",
        "resources": {"cpu": "500m", "memory": "512Mi"}, "network": {"policy": "Full"},
        "isolation": {"minimum": "VM", "runtimeClassName": "kata", "readOnlyRootFilesystem": False},
    },
}


@pytest.fixture
def config() -> OperatorConfig:
    return OperatorConfig()
