"""OOM kills are read from the kernel the same way for every backend: the task's cgroup counter, and on v1 for
containers the parent's OOM notification (a v1 parent never counts its child cgroups' kills).

Real cgroups, no engine: a process allocating past a limit in a cgroup made here. Every backend's end-to-end
report is in tests/isolation/test_reporting.py.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid

import pytest

from expbuild_isolation.executors import cgroups
from expbuild_isolation.executors.containers.cgroup import ContainerCgroup

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making cgroups needs root")
MiB = 1 << 20
HOG = 'x=$(head -c 100000000 /dev/zero | tr "\\0" a)'
V1 = (cgroups.CGROUP_ROOT / "memory").is_dir() and cgroups.detect_version() == 1


TOP = "expbuild-test-containers"


@pytest.fixture(autouse=True, scope="module")
def _remove_the_top_afterwards():  # type: ignore[no-untyped-def]
    yield
    for top in cgroups.CGROUP_ROOT.glob(f"*/{TOP}"):
        with contextlib.suppress(OSError):
            top.rmdir()


def rmdir_when_empty(directory) -> None:  # type: ignore[no-untyped-def]
    """A killed process leaves its cgroup a moment after its parent reaped it."""
    for _ in range(200):
        try:
            directory.rmdir()
            return
        except OSError:
            time.sleep(0.01)
    directory.rmdir()


def run_in(procs: list, script: str) -> int:
    """Run ``script`` with its shell moved into the cgroups first; returns its exit status."""
    joins = "; ".join(f"echo $$ > {p}" for p in procs)
    return subprocess.run(["/bin/sh", "-c", f"{joins}; {script}"]).returncode


@pytest.mark.parametrize("version", [
    pytest.param(1, marks=pytest.mark.skipif(not V1, reason="cgroup v1 memory controller not mounted here")),
    pytest.param(2, marks=pytest.mark.skipif(not {"memory", "pids"} <= cgroups.v2_controllers(),
                                             reason="cgroup v2 has no memory controller here")),
])
def test_the_oom_kill_counter_of_a_task_cgroup(version):
    group = cgroups.TaskCgroup.create(f"oom-{uuid.uuid4().hex[:6]}", parent="expbuild-test", version=version)
    try:
        group.set_limits(memory_bytes=32 * MiB, max_processes=None, cpu_cores=None)
        memory = group.dirs["memory" if version == 1 else "unified"]
        assert cgroups.oom_kills(memory, version) == 0
        assert run_in(group.procs_files, f"sh -c '{HOG}'; echo child=$?") == 0   # the shell goes on
        assert cgroups.oom_kills(memory, version) >= 1
        assert group.stats().oom_killed
    finally:
        group.remove()


@pytest.mark.skipif(not V1, reason="the v1 parent notification; v2 reads the parent's memory.events")
def test_a_v1_parent_sees_its_containers_oom_kill_after_the_container_cgroup_is_gone():
    parent = ContainerCgroup(TOP, f"xb-{uuid.uuid4().hex[:8]}")
    engine_limit = parent.limit_memory(32 * MiB)
    assert engine_limit == 32 * MiB + os.sysconf("SC_PAGE_SIZE")
    memory = cgroups.CGROUP_ROOT / "memory" / parent.relative
    pids = cgroups.CGROUP_ROOT / "pids" / parent.relative
    container = memory / "ctr"                                   # what an engine would make below the parent
    container.mkdir()
    (container / "memory.limit_in_bytes").write_text(str(engine_limit))
    pids.mkdir(parents=True)
    try:
        assert run_in([container / "cgroup.procs"], f"sh -c '{HOG}'; echo child=$?") == 0
        assert cgroups.oom_kills(memory, 1) == 0                  # why the counter alone is not enough on v1
        rmdir_when_empty(container)                               # the engine removes its cgroup at exit
        stats = parent.stats()
        assert stats is not None and stats.oom_killed
    finally:
        if container.exists():
            rmdir_when_empty(container)
        parent.remove()
    assert not memory.exists()


@pytest.mark.skipif(not V1, reason="the v1 parent notification")
def test_a_v1_parent_without_an_oom_reports_none():
    parent = ContainerCgroup(TOP, f"xb-{uuid.uuid4().hex[:8]}")
    engine_limit = parent.limit_memory(32 * MiB)
    memory = cgroups.CGROUP_ROOT / "memory" / parent.relative
    (cgroups.CGROUP_ROOT / "pids" / parent.relative).mkdir(parents=True)
    container = memory / "ctr"
    container.mkdir()
    (container / "memory.limit_in_bytes").write_text(str(engine_limit))
    try:
        assert run_in([container / "cgroup.procs"], "dd if=/dev/zero of=/dev/null bs=1M count=100 2>/dev/null") == 0
        rmdir_when_empty(container)
        stats = parent.stats()
        assert stats is not None and not stats.oom_killed
    finally:
        if container.exists():
            rmdir_when_empty(container)
        parent.remove()
