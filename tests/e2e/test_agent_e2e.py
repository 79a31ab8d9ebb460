"""A node agent run as a local process against a real cluster from KUBECONFIG.

The operator runs in-process (KopfRunner) and places a task that asks for the
namespace executor on the agent, which claims it and runs it on this machine.
Needs root here (the namespace executor); skipped with the reason otherwise,
and when no cluster answers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from .test_operator_e2e import CRD, _crd_exists

FINISHED = {"Succeeded", "Failed", "TimedOut", "Error", "Cancelled"}


def test_a_namespace_task_is_claimed_and_run_by_a_local_agent(cluster, namespace, tmp_path, monkeypatch):
    import kubernetes

    if os.geteuid() != 0:
        pytest.skip("the agent's namespace executor needs root here")
    from kopf.testing import KopfRunner

    if not _crd_exists(cluster):
        kubernetes.utils.create_from_yaml(cluster, str(CRD))
    node = kubernetes.client.CoreV1Api(cluster).list_node().items[0].metadata.name
    monkeypatch.setenv("EXPBUILD_AGENT_NAMESPACE", namespace)
    agent = subprocess.Popen(
        [sys.executable, "-m", "expbuild_isolation.cli", "agent", "--node", node, "--namespace", namespace,
         "--task-namespace", namespace, "--seccomp-dir", str(tmp_path / "seccomp"), "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    task = {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask",
            "metadata": {"name": "on-agent", "namespace": namespace},
            "spec": {"command": ["sh", "-c", "echo from-agent > out.txt"], "outputs": {"paths": ["out.txt"]},
                     "timeout": "60s", "isolation": {"executor": "namespace", "minimum": "Container"}}}
    custom = kubernetes.client.CustomObjectsApi(cluster)
    try:
        args = ["run", "--standalone", "--namespace", namespace, "-m", "tests.e2e.operator_main"]
        with KopfRunner(args, timeout=180) as runner:
            custom.create_namespaced_custom_object("expbuild.io", "v1alpha1", namespace, "executiontasks", task)
            deadline, status = time.monotonic() + 120, {}
            while time.monotonic() < deadline:
                obj = custom.get_namespaced_custom_object("expbuild.io", "v1alpha1", namespace, "executiontasks",
                                                          "on-agent")
                status = obj.get("status") or {}
                if status.get("phase") in FINISHED:
                    break
                time.sleep(1)
    finally:
        agent.terminate()
        output = agent.communicate(timeout=30)[0]
    assert runner.exception is None
    assert status.get("phase") == "Succeeded", (status, output[-2000:])
    assert status["executor"] == "namespace" and status["isolationLevel"] == "Container"
    assert status["node"] == node and status["outputs"][0]["path"] == "out.txt"
