"""DockerExecutor against a real dockerd (see container_cases.py); plus gVisor as the VM level
(EXPBUILD_REQUIRE_BACKENDS=...,gvisor turns its skip into a failure)."""

import os


import pytest

from container_cases import cases, make, request, required, usable
from expbuild_isolation.executors.base import ExecutorUnavailable, IsolationLevel, TerminationReason
from expbuild_isolation.executors.workspace import create_workspace, remove_workspace

globals().update(cases("docker"))


def test_gvisor_counts_as_vm_level():
    assert make("docker", runtime="runsc").capabilities().isolation_level == IsolationLevel.VM
    assert make("docker").capabilities().isolation_level == IsolationLevel.CONTAINER


async def test_a_task_runs_under_gvisor():
    """The VM level is claimed for runsc: the task must meet gVisor's own kernel, not the host's."""
    runc = await usable("docker")
    gvisor = make("docker", runtime="runsc")
    try:
        await gvisor.health_check()
    except ExecutorUnavailable as exc:
        await runc.close()
        if required("gvisor"):
            pytest.fail(f"gvisor is required (EXPBUILD_REQUIRE_BACKENDS) but runsc is unusable: {exc}")
        pytest.skip(f"runsc is not registered with dockerd: {exc}")
    ws = create_workspace()
    script = "dmesg 2>&1 | head -3; uname -r; id -u"
    try:
        result = await gvisor.execute(request(ws, "sh", "-c", script))
        control = await runc.execute(request(ws, "sh", "-c", script))
    finally:
        remove_workspace(ws)
        await gvisor.close()
        await runc.close()
    assert result.reason == TerminationReason.COMPLETED, result
    lines = result.stdout.decode().splitlines()
    assert any("gVisor" in line for line in lines[:3]), lines   # its kernel log starts "Starting gVisor..."
    assert lines[-2] != os.uname().release and lines[-1] == "65534", lines
    assert result.isolation_level == IsolationLevel.VM
    # the same task under runc meets the host's kernel: the check above can tell the two apart
    assert b"gVisor" not in control.stdout and control.stdout.decode().splitlines()[-2] == os.uname().release


def test_the_working_directory_is_not_created_through_a_workspace_symlink(tmp_path):
    """prepare_workspace runs as root on the host before the container exists (no daemon needed here)."""
    from expbuild_isolation.executors.base import ExecutionRequest
    from expbuild_isolation.executors.workspace import WorkspaceError
    workspace, outside = tmp_path / "ws", tmp_path / "outside"
    workspace.mkdir()
    outside.mkdir()
    os.symlink(outside, workspace / "src")
    with pytest.raises(WorkspaceError, match="'src' is a symlink"):
        make("docker").prepare_workspace(ExecutionRequest(task_id="t", argv=("true",), workspace=workspace,
                                                          working_dir="src/build"))
    assert list(outside.iterdir()) == []
