"""The namespace executor on the unified hierarchy (cgroup v2), judged from the kernel's own files.

These need /sys/fs/cgroup to be cgroup v2 with the memory, pids and cpu controllers: a v2 machine, or the
cgroup-v2-only guest that ``test_guest.py`` boots. The guest sets EXPBUILD_IN_CGROUP_V2_GUEST=1, and there
a missing v2 hierarchy fails instead of skipping. On a cgroup v1 machine they skip; test_guest.py runs them.

Each promise is read from outside the task while it runs (``/proc/<pid>/cgroup`` of the task's shell, then
the limit files of that cgroup), beside a control task that shows the probe sees something different when
the limit is not asked for.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path

import pytest

from expbuild_isolation.executors import cgroups
from expbuild_isolation.executors.base import ExecutionRequest, ExecutionResult, ResourceLimits, TerminationReason
from expbuild_isolation.executors.config import NamespaceConfig
from expbuild_isolation.executors.namespace.executor import NamespaceExecutor
from expbuild_isolation.executors.workspace import create_workspace, remove_workspace

PARENT = "expbuild-v2test"
MiB = 1 << 20


def _v2_problem() -> str | None:
    if os.geteuid() != 0:
        return "the namespace executor needs root"
    if cgroups.v2_root() != cgroups.CGROUP_ROOT:
        return f"{cgroups.CGROUP_ROOT} is not the unified (v2) hierarchy here (cgroup v1 or hybrid)"
    missing = {"memory", "pids", "cpu"} - cgroups.v2_controllers()
    return f"cgroup v2 lacks the {sorted(missing)} controllers here" if missing else None


@pytest.fixture(autouse=True)
def _cgroup_v2():
    problem = _v2_problem()
    if problem and os.environ.get("EXPBUILD_IN_CGROUP_V2_GUEST") == "1":
        pytest.fail(f"inside the cgroup v2 guest, yet {problem}")
    if problem:
        pytest.skip(f"{problem}; tests/cgroupv2/test_guest.py runs these in a cgroup v2 guest")


@pytest.fixture
def executor():
    return NamespaceExecutor(NamespaceConfig(cgroup_parent=PARENT))


@pytest.fixture
def workspace():
    path = create_workspace()
    yield path
    remove_workspace(path)


def request(workspace: Path, script: str, marker: str, *, timeout: float = 30, **limits) -> ExecutionRequest:
    """``script`` under /bin/sh with ``marker`` as $0, so the task's shell can be found in /proc."""
    return ExecutionRequest(task_id=f"v2-{uuid.uuid4().hex[:6]}", argv=("/bin/sh", "-c", script, marker),
                            workspace=workspace, timeout_seconds=timeout, limits=ResourceLimits(**limits))


def _find(marker: str) -> tuple[int, Path] | None:
    """The pid and v2 cgroup directory of the process whose command line carries ``marker``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() not in (entry / "cmdline").read_bytes():
                continue
            line = (entry / "cgroup").read_text().strip()
        except OSError:
            continue
        if line.startswith("0::/"):
            return int(entry.name), cgroups.CGROUP_ROOT / line.removeprefix("0::/")
    return None


async def read_while_running(executor: NamespaceExecutor, workspace: Path, script: str, files: tuple[str, ...],
                             *, after: float = 0.0, **limits) -> tuple[Path, dict[str, str], ExecutionResult]:
    """Run ``script``; once its shell runs (and ``after`` seconds later) read ``files`` of its cgroup, then
    SIGKILL the shell (pid 1 of the task's namespace: the task ends there)."""
    marker = f"v2-probe-{uuid.uuid4().hex[:10]}"
    run = asyncio.ensure_future(executor.execute(request(workspace, script, marker, timeout=120, **limits)))
    found = None
    while found is None and not run.done():
        found = _find(marker)
        await asyncio.sleep(0.01)
    assert found is not None, f"the task never ran: {await run}"
    pid, group = found
    await asyncio.sleep(after)
    try:
        seen = {name: (group / name).read_text().strip() for name in files}
    finally:
        os.kill(pid, signal.SIGKILL)
    result = await run
    assert result.exit_code == 137 and result.reason == TerminationReason.NON_ZERO_EXIT, result
    return group, seen, result


LIMIT_FILES = ("memory.max", "memory.swap.max", "pids.max", "cpu.max")


async def test_the_task_runs_in_its_own_cgroup_with_every_limit_written(executor, workspace):
    group, seen, _ = await read_while_running(executor, workspace, "sleep 60", LIMIT_FILES,
                                              memory_bytes=96 * MiB, max_processes=33, cpu_cores=0.5)
    assert group.parent == cgroups.CGROUP_ROOT / PARENT and group.name.endswith(f".{os.getpid()}")
    assert seen == {"memory.max": str(96 * MiB), "memory.swap.max": "0", "pids.max": "33",
                    "cpu.max": "50000 100000"}
    assert not group.exists(), "the task's cgroup outlived it"
    # control: a task that asks for no limits runs under the kernel's defaults (and the executor's pids default)
    _, defaults, _ = await read_while_running(executor, workspace, "sleep 60", LIMIT_FILES)
    assert defaults == {"memory.max": "max", "memory.swap.max": "max", "pids.max": "1024", "cpu.max": "max 100000"}


async def test_the_pids_limit_holds_from_the_tasks_first_instruction(executor, workspace):
    """pids.max counts the task itself: with 1 its very first fork fails, so the limit was there before exec."""
    marker = f"v2-fork-{uuid.uuid4().hex[:8]}"
    script = "/bin/busybox true && echo forked"
    refused = await executor.execute(request(workspace, script, marker, max_processes=1))
    assert b"forked" not in refused.stdout, refused
    assert refused.reason == TerminationReason.PIDS_LIMIT, refused
    allowed = await executor.execute(request(workspace, script, marker, max_processes=2))
    assert (allowed.stdout, allowed.reason) == (b"forked\n", TerminationReason.COMPLETED), allowed


async def test_cpu_max_throttles_the_task(executor, workspace):
    spin = "while :; do :; done"
    _, limited, _ = await read_while_running(executor, workspace, spin, ("cpu.stat",), after=1.5, cpu_cores=0.2)
    assert _keyed(limited["cpu.stat"])["nr_throttled"] > 0
    _, free, _ = await read_while_running(executor, workspace, spin, ("cpu.stat",), after=1.5)
    assert _keyed(free["cpu.stat"])["nr_throttled"] == 0


async def test_an_oom_kill_is_counted_from_memory_events(executor, workspace):
    """memory.events is hierarchical: the parent's oom_kill counter keeps the task's kill after its cgroup is gone."""
    events = cgroups.CGROUP_ROOT / PARENT / "memory.events"
    allocate = "/bin/busybox dd if=/dev/zero of=/dev/null bs={} count=1 2>/dev/null; echo survived"
    before = _oom_kills(events)
    fits = await executor.execute(request(workspace, allocate.format("4M"), "v2-oom-control", memory_bytes=32 * MiB))
    assert (fits.stdout, fits.reason) == (b"survived\n", TerminationReason.COMPLETED), fits
    assert _oom_kills(events) == before
    killed = await executor.execute(request(workspace, allocate.format("64M"), "v2-oom", memory_bytes=32 * MiB))
    assert _oom_kills(events) > before
    assert (killed.exit_code, killed.reason) == (137, TerminationReason.OOM_KILLED), killed


def _keyed(text: str) -> dict[str, int]:
    return {key: int(value) for key, value in (line.split() for line in text.splitlines())}


def _oom_kills(events: Path) -> int:
    return _keyed(events.read_text())["oom_kill"] if events.exists() else 0
