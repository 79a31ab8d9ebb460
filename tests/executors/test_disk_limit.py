"""The namespace executor's disk limit holds in place: the workspace becomes the size-limited tmpfs.

The attacks (symlinks written through, sparse files, filling the disk) are in tests/isolation; here: the
workspace's life as a mount, its removal and the sweep after a crashed worker.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from expbuild_isolation.executors.mounts import DISK_SOURCE
from expbuild_isolation.executors.namespace import disk_limit
from expbuild_isolation.executors.base import ExecutionRequest, ResourceLimits, TerminationReason
from expbuild_isolation.executors.config import NamespaceConfig
from expbuild_isolation.executors.namespace.executor import NamespaceExecutor
from expbuild_isolation.executors.workspace import create_workspace, remove_workspace

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the namespace executor needs root (mounts, cgroups)")
MiB = 1 << 20


def disk_mounts() -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if f" - tmpfs {DISK_SOURCE}." in line]


async def test_the_workspace_is_the_limited_tmpfs_until_it_is_removed():
    workspace = create_workspace()
    (workspace / "input.txt").write_text("input")
    try:
        result = await NamespaceExecutor(NamespaceConfig(cgroup_parent="expbuild-test")).execute(ExecutionRequest(
            task_id=f"t-{uuid.uuid4().hex[:6]}", argv=("/bin/sh", "-c", "cat input.txt > out.txt; echo x > /tmp/t"),
            workspace=workspace, output_paths=("out.txt",), limits=ResourceLimits(disk_bytes=8 * MiB)))
        assert result.reason is TerminationReason.COMPLETED, result
        assert [(f.path, f.size_bytes) for f in result.output_files] == [("out.txt", 5)]
        assert (workspace / "out.txt").read_text() == "input"          # read where the task wrote it
        statfs = os.statvfs(workspace)
        assert statfs.f_blocks * statfs.f_frsize == 8 * MiB              # the workspace is the 8 MiB tmpfs
        assert [line.split()[4] for line in disk_mounts()] == [str(workspace)]
        assert list(disk_limit.DISK_ROOT.iterdir()) == []                # the tmpfs's own mount point is gone
    finally:
        remove_workspace(workspace)
    assert not workspace.exists()
    assert disk_mounts() == []


def test_the_sweep_unmounts_the_disks_of_a_dead_worker(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = tmp_path / "mine"
    theirs = tmp_path / "theirs with space"
    for point, owner in ((mine, os.getpid()), (theirs, dead.pid)):
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", f"{DISK_SOURCE}.{owner}", str(point)],
                       check=True)
    try:
        disk_limit.sweep_disks()
        points = [line.split()[4] for line in disk_mounts()]
        assert points == [str(mine)]                                      # a live worker's disk stays
    finally:
        for point in (mine, theirs):
            subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)


async def test_inputs_larger_than_the_disk_limit_are_a_clear_start_failure():
    workspace = create_workspace()
    (workspace / "big").write_bytes(b"x" * (2 * MiB))
    try:
        result = await NamespaceExecutor(NamespaceConfig(cgroup_parent="expbuild-test")).execute(ExecutionRequest(
            task_id=f"t-{uuid.uuid4().hex[:6]}", argv=("/bin/sh", "-c", "echo ran"), workspace=workspace,
            limits=ResourceLimits(disk_bytes=1 * MiB)))
        assert (result.reason, result.exit_code) == (TerminationReason.START_FAILED, 127), result
        assert result.message.startswith("spec.resources.disk:") and str(2 * MiB) in result.message
        assert disk_mounts() == [] and list(disk_limit.DISK_ROOT.iterdir()) == []
    finally:
        remove_workspace(workspace)
