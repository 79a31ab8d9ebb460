"""A worker in a pod's cgroup namespace on a systemd cgroup v2 node: the namespace executor says it cannot
place tasks, instead of failing every task.

systemd mounts cgroup2 with ``nsdelegate``; a container or a Kubernetes pod (the node agent's DaemonSet) has a
cgroup namespace of its own; the kernel then refuses to move a process into a cgroup outside that namespace,
such as the executor's ``/sys/fs/cgroup/<parent>/<task>``. Runs where cgroup2 is mounted so: in the guest
(``guest_stage2.sh`` mounts it as systemd does), and on a systemd v2 machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from expbuild_isolation.executors import cgroups

from .test_v2_limits import PARENT, _cgroup_v2  # noqa: F401 - the same v2-or-skip gate

WORKER = """
import asyncio, sys
from expbuild_isolation.executors.base import ExecutionRequest, ExecutorUnavailable
from expbuild_isolation.executors.config import NamespaceConfig
from expbuild_isolation.executors.namespace.executor import NamespaceExecutor
from expbuild_isolation.executors.workspace import create_workspace, remove_workspace

async def main():
    executor = NamespaceExecutor(NamespaceConfig(cgroup_parent=sys.argv[1]))
    try:
        await executor.health_check()
    except ExecutorUnavailable as exc:
        print("unavailable:", exc)
        return
    workspace = create_workspace()
    try:
        result = await executor.execute(ExecutionRequest(task_id="in-pod", argv=("/bin/sh", "-c", "echo ran"),
                                                         workspace=workspace))
    finally:
        remove_workspace(workspace)
    print("result:", result.exit_code, result.reason.value, result.stdout, result.message)

asyncio.run(main())
"""


def nsdelegate() -> bool:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(cgroups.CGROUP_ROOT) and " - cgroup2 " in line:
            return "nsdelegate" in line.split(" - ", 1)[1]
    return False


def run_worker(pod: Path, *, own_cgroup_namespace: bool) -> str:
    """A worker process moved into ``pod`` (a cgroup like a pod's), in a cgroup namespace of its own or not."""
    unshare = "unshare --cgroup " if own_cgroup_namespace else ""
    script = f'echo $$ > {pod}/cgroup.procs && exec {unshare}"$0" -c "$1" {PARENT}'
    worker = subprocess.run(["/bin/sh", "-c", script, sys.executable, WORKER], capture_output=True, text=True,
                            timeout=240)
    return worker.stdout + worker.stderr


@pytest.fixture
def pod():
    path = cgroups.CGROUP_ROOT / f"pod-like-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    deadline = time.monotonic() + 20
    while (path / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)   # the worker's zygote follows it (PR_SET_PDEATHSIG)
    path.rmdir()


def test_in_a_pods_cgroup_namespace_the_executor_is_unavailable_with_the_reason(pod):
    if not nsdelegate():
        if os.environ.get("EXPBUILD_IN_CGROUP_V2_GUEST") == "1":
            pytest.fail("the guest mounts cgroup2 with nsdelegate, yet it is not there")
        pytest.skip(f"cgroup2 at {cgroups.CGROUP_ROOT} is not mounted with nsdelegate here (systemd mounts it so)")
    control = run_worker(pod, own_cgroup_namespace=False)
    assert "result: 0 Completed b'ran\\n'" in control, control   # the same worker in the host's cgroup namespace
    inside = run_worker(pod, own_cgroup_namespace=True)
    assert "unavailable: cannot place tasks in cgroups: a process cannot join a cgroup under" in inside, inside
    assert "cgroup namespace of its own" in inside, inside
