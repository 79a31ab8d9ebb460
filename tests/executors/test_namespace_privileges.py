"""The namespace executor with the privileges a container gives its root, not a host's.

A node agent runs as root inside a pod: the runtime drops capabilities such as CAP_SYS_NICE and
CAP_SYS_RESOURCE. The executor must work with what the chart's non-privileged agent gets (CAP_SYS_ADMIN
added to the runtime's defaults), so these tests run the CLI with the missing capabilities taken out of
its bounding set (util-linux ``setpriv``), on this machine's real namespaces and cgroups.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# What Docker and containerd give a container's root, plus the SYS_ADMIN the chart adds (agent.privileged=false).
CONTAINER_CAPS = ["chown", "dac_override", "fsetid", "fowner", "mknod", "net_raw", "setgid", "setuid", "setfcap",
                  "setpcap", "net_bind_service", "sys_chroot", "kill", "audit_write", "sys_admin"]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the namespace executor needs root (namespaces, cgroups)"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed"),
]


def run_with_caps(tmp_path: Path, caps: list[str], **spec) -> dict:
    task = {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask", "metadata": {"name": "t"},
            "spec": {"command": ["sh", "-c", "echo in-sandbox"], "timeout": "30s"} | spec}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    bounding = "-all," + ",".join(f"+{cap}" for cap in caps)
    done = subprocess.run(["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", sys.executable, "-m",
                           "expbuild_isolation.cli", "run", str(path), "--executor", "namespace", "-o", "json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("{"), done.stderr
    return json.loads(done.stdout)["status"]


def test_the_namespace_executor_runs_with_a_containers_capabilities(tmp_path):
    status = run_with_caps(tmp_path, CONTAINER_CAPS, resources={"memory": "64Mi", "pids": 32})
    assert (status["phase"], status["executor"]) == ("Succeeded", "namespace"), status
    assert "in-sandbox" in status["logs"]["stdoutTail"]


def test_a_missing_privilege_is_named_with_its_step_and_is_not_the_tasks_failure(tmp_path):
    # Without CAP_NET_ADMIN the sandbox cannot bring up a task's loopback: say that, not "[Errno 1]".
    status = run_with_caps(tmp_path, [cap for cap in CONTAINER_CAPS], network={"policy": "Localhost"})
    assert (status["phase"], status["reason"]) == ("Error", "SandboxFailed"), status
    assert "bring up lo" in status["message"] and "CAP_NET_ADMIN" in status["message"], status["message"]
    assert "Operation not permitted" in status["message"] and "exitCode" not in status
    # The positive control: with CAP_NET_ADMIN (the chart's agent.addCapabilities) the same task runs.
    status = run_with_caps(tmp_path, [*CONTAINER_CAPS, "net_admin"], network={"policy": "Localhost"})
    assert status["phase"] == "Succeeded", status
