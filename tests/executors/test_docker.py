"""DockerExecutor against a real dockerd (see container_cases.py); plus gVisor as the VM level."""

import os

import pytest

from container_cases import cases, make, usable
from expbuild_isolation.executors.base import IsolationLevel, TerminationReason
from expbuild_isolation.executors.workspace import create_workspace, remove_workspace

globals().update(cases("docker"))


def test_gvisor_counts_as_vm_level():
    assert make("docker", runtime="runsc").capabilities().isolation_level == IsolationLevel.VM
    assert make("docker").capabilities().isolation_level == IsolationLevel.CONTAINER


async def test_a_task_runs_under_gvisor():
    executor = await usable("docker")
    await executor.close()
    gvisor = make("docker", runtime="runsc")
    try:
        await gvisor.health_check()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"runsc is not registered with dockerd: {exc}")
    from container_cases import request
    ws = create_workspace()
    try:
        result = await gvisor.execute(request(ws, "sh", "-c", "dmesg | grep -c gVisor; id -u"))
    finally:
        remove_workspace(ws)
        await gvisor.close()
    assert result.reason == TerminationReason.COMPLETED, result
    assert result.isolation_level == IsolationLevel.VM and result.stdout.split()[-1] == b"65534"


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
