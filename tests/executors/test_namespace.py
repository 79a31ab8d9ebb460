"""The namespace executor against the real kernel: cgroups, mounts, exit codes, stats, cleanup."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from expbuild_isolation.api.task import NetworkMode
from expbuild_isolation.executors import cgroups
from expbuild_isolation.executors.base import ExecutionRequest, ResourceLimits, TerminationReason
from expbuild_isolation.executors.config import NamespaceConfig
from expbuild_isolation.executors.namespace import NamespaceExecutor
from expbuild_isolation.executors.workspace import create_workspace, remove_workspace

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="the namespace executor needs root (namespaces, cgroups)")]

PARENT = "expbuild-test"


@pytest.fixture
def executor():
    return NamespaceExecutor(NamespaceConfig(cgroup_parent=PARENT))


@pytest.fixture
def workspace():
    path = create_workspace()
    yield path
    remove_workspace(path)


def request(workspace: Path, script: str, **kw) -> ExecutionRequest:
    return ExecutionRequest(task_id=kw.pop("task_id", f"t-{uuid.uuid4().hex[:6]}"), argv=("/bin/sh", "-c", script),
                            workspace=workspace, timeout_seconds=kw.pop("timeout", 20), **kw)


def our_cgroups(*, spares: bool = False) -> list[Path]:
    """This process's task cgroups under PARENT (their names end with its pid: another test run on the machine
    has its own); idle spares (launchers waiting for a task, named spare-*) only if asked."""
    found = []
    ours = f".{os.getpid()}"
    for base in [cgroups.CGROUP_ROOT / c for c in cgroups.V1_CONTROLLERS] + [cgroups.v2_root() or Path("/nonexistent")]:
        if (base / PARENT).is_dir():
            found += [p for p in (base / PARENT).iterdir()
                      if p.is_dir() and p.name.endswith(ours) and p.name.startswith("spare-") == spares]
    return found


def our_mounts() -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if "expbuild-isolation" in line]


@pytest.mark.parametrize("script, timeout, code, reason", [
    ("exit 0", 20, 0, TerminationReason.COMPLETED),
    ("exit 3", 20, 3, TerminationReason.NON_ZERO_EXIT),
    ("/bin/sh -c '/bin/busybox kill -9 $$'", 20, 137, TerminationReason.NON_ZERO_EXIT),  # pid 1 cannot kill itself
    ("sleep 30", 1, 124, TerminationReason.DEADLINE_EXCEEDED),
])
async def test_exit_codes_map_to_reasons(executor, workspace, script, timeout, code, reason):
    # Only the sleep needs a short timeout: under emulation (the cgroup v2 guest) a cold launcher takes >1 s.
    result = await executor.execute(request(workspace, script, timeout=timeout))
    assert (result.exit_code, result.reason) == (code, reason), result


async def test_a_missing_program_is_start_failed_with_the_reason(executor, workspace):
    result = await executor.execute(ExecutionRequest(task_id="nope", argv=("no-such-tool",), workspace=workspace))
    assert (result.exit_code, result.reason) == (127, TerminationReason.START_FAILED)
    assert "No such file" in result.message


async def test_the_task_sees_its_sandbox(executor, workspace):
    (workspace / "in.txt").write_text("input")
    script = ("id -u; hostname; cat in.txt; echo; grep -c . /proc/self/mountinfo >/dev/null; "
              "touch /usr/x 2>/dev/null || echo ro-usr; touch /tmp/x && echo tmp-ok; ls /root 2>/dev/null || echo no-root; "
              "grep CapEff /proc/self/status; echo out > out.txt")
    result = await executor.execute(request(workspace, script, output_paths=("out.txt",)))
    lines = result.stdout.decode().splitlines()
    assert lines[:3] == ["65534", "expbuild", "input"]
    assert {"ro-usr", "tmp-ok", "no-root", "CapEff:\t0000000000000000"} <= set(lines)
    assert [f.path for f in result.output_files] == ["out.txt"]
    assert (workspace / "out.txt").read_text() == "out\n"


async def test_stats_come_from_the_cgroup(executor, workspace):
    result = await executor.execute(request(workspace, "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"))
    assert result.stats.cpu_time_seconds and result.stats.cpu_time_seconds > 0.05
    assert result.stats.peak_memory_bytes and result.stats.peak_memory_bytes > 0
    assert result.stats.duration_seconds > 0


async def test_logs_are_bounded_and_flagged(executor, workspace):
    result = await executor.execute(request(workspace, "/bin/busybox head -c 100000 /dev/zero; echo err >&2",
                                            log_limit_bytes=1000))
    assert len(result.stdout) == 1000 and result.stdout_truncated
    assert result.stderr == b"err\n" and not result.stderr_truncated


async def test_nothing_is_left_behind(executor, workspace):
    marker = f"leftover-{uuid.uuid4().hex[:8]}"
    script = f"/bin/busybox setsid /bin/sh -c 'sleep 60' {marker} & sleep 60"
    await executor.execute(request(workspace, script, timeout=1, limits=ResourceLimits(disk_bytes=8 << 20)))
    assert our_cgroups() == []
    assert our_mounts() == []
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, marker)]


def _cmdline_has(proc: Path, marker: str) -> bool:
    try:
        return marker.encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False


async def test_concurrent_tasks_each_get_their_own_sandbox(executor):
    spaces = [create_workspace() for _ in range(4)]
    try:
        results = await asyncio.gather(*(executor.execute(request(ws, f"echo {i} > n; cat n; sleep 0.3",
                                                                  output_paths=("n",)))
                                         for i, ws in enumerate(spaces)))
        assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(4)]
    finally:
        for ws in spaces:
            remove_workspace(ws)
    assert our_cgroups() == []


async def test_localhost_brings_up_lo_and_none_leaves_it_down(executor, workspace):
    script = "cat /sys/class/net/lo/operstate 2>/dev/null; /bin/busybox ip link show lo | /bin/busybox head -1"
    none = await executor.execute(request(workspace, script))
    local = await executor.execute(request(workspace, script, limits=ResourceLimits(
        network=__import__("expbuild_isolation.executors.base", fromlist=["NetworkPolicy"]).NetworkPolicy(
            NetworkMode.LOCALHOST))))
    assert b"UP" not in none.stdout.split(b"<", 1)[-1].split(b">")[0]
    assert b"UP" in local.stdout


async def test_a_directory_rootfs(workspace, tmp_path):
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    os.symlink("busybox", root / "bin" / "sh")
    executor = NamespaceExecutor(NamespaceConfig(cgroup_parent=PARENT, rootfs=str(root)))
    result = await executor.execute(ExecutionRequest(task_id="dir", argv=("/bin/sh", "-c", "/bin/busybox ls /"),
                                                     workspace=workspace, env={"PATH": "/bin"}))
    assert result.exit_code == 0, result
    assert set(result.stdout.split()) >= {b"bin", b"proc", b"workspace", b"tmp", b"dev"}
    assert b"usr" not in result.stdout.split()


def test_restricted_network_is_not_offered(executor):
    assert NetworkMode.RESTRICTED not in executor.capabilities().network_policies


CRASHED_WORKER = """
import sys
from expbuild_isolation.executors import cgroups
group = cgroups.TaskCgroup.create("crashed", parent=sys.argv[1])
for procs in group.procs_files:
    procs.write_text(sys.argv[2])
print(*group.dirs.values())
"""


def test_the_startup_sweep_removes_a_dead_workers_cgroups():
    """A worker that died left a cgroup named after its pid, with a process inside; the next executor's sweep
    kills the process and removes the cgroup. (A real dead process: cgroup v2 has no rename(2) to fake one.)"""
    stray = subprocess.Popen(["sleep", "60"])
    worker = subprocess.run([sys.executable, "-c", CRASHED_WORKER, PARENT, str(stray.pid)],
                            capture_output=True, text=True, check=True)
    left = [Path(line) for line in worker.stdout.split()]
    assert left and all(p.is_dir() for p in left) and stray.poll() is None
    NamespaceExecutor(NamespaceConfig(cgroup_parent=PARENT))
    assert stray.wait(timeout=5) == -9
    assert not any(p.exists() for p in left)


def _cgroup_lifecycle(version: int) -> None:
    group = cgroups.TaskCgroup.create(f"lifecycle-v{version}", parent=PARENT, version=version)
    try:
        group.set_limits(memory_bytes=64 << 20, max_processes=16, cpu_cores=0.5)
        child = subprocess.Popen(["/bin/sh", "-c", "echo $$ > /dev/null; for p in " + " ".join(
            str(p) for p in group.procs_files) + "; do echo 0 > $p; done; exec sleep 60"])
        for _ in range(100):
            if child.pid in group.pids():
                break
            __import__("time").sleep(0.01)
        assert child.pid in group.pids()
        group.kill()
        assert child.wait(timeout=5) == -9
        assert group.is_empty()
        stats = group.stats()
        assert stats.cpu_time_seconds is not None and stats.peak_memory_bytes is not None
        assert not stats.oom_killed
    finally:
        group.remove()
    assert not any(d.exists() for d in group.dirs.values())


@pytest.mark.skipif(not all((cgroups.CGROUP_ROOT / c).is_dir() for c in ("memory", "pids")),
                    reason="cgroup v1 memory and pids controllers are not mounted here")
def test_cgroup_v1_create_limit_kill_stats_remove():
    _cgroup_lifecycle(1)


@pytest.mark.skipif(not {"memory", "pids", "cpu"} <= cgroups.v2_controllers(),
                    reason=f"cgroup v2 has no memory/pids/cpu controllers here "
                           f"(unified hierarchy at {cgroups.v2_root()} offers {sorted(cgroups.v2_controllers())})")
def test_cgroup_v2_create_limit_kill_stats_remove():
    _cgroup_lifecycle(2)


async def test_the_task_holds_no_descriptor_but_stdio(executor, workspace):
    """The launcher's status pipe (and anything else it had) is closed before exec: the task cannot fake its end."""
    result = await executor.execute(request(workspace, "/bin/busybox ls /proc/self/fd"))
    assert sorted(result.stdout.split()) == [b"0", b"1", b"2", b"3"], result   # 3: the ls's own directory fd


async def test_a_workspace_on_a_mount_made_after_the_spares_is_seen(executor, tmp_path):
    """Spares copy the mount table before their task exists: the workspace reaches them as an open tree."""
    await executor.warmup()
    mountpoint = tmp_path / "late"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "late", str(mountpoint)], check=True)
    try:
        (mountpoint / "in.txt").write_text("late mount")
        result = await executor.execute(request(mountpoint, "cat in.txt; echo out > out.txt"))
        assert result.stdout == b"late mount", result
        assert (mountpoint / "out.txt").read_text() == "out\n"
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def task_cgroups(token: str) -> dict[str, Path]:
    """The cgroups of the process whose command line carries ``token``, as the kernel lists them in
    /proc/<pid>/cgroup: controller -> directory on v1, "unified" -> directory on v2."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _cmdline_has(proc, token):
            try:
                lines = (proc / "cgroup").read_text().splitlines()
            except OSError:
                continue
            found = {}
            for line in lines:
                _, controllers, path = line.split(":", 2)
                if controllers:
                    found.update({c: cgroups.CGROUP_ROOT / controllers / path.lstrip("/")
                                  for c in controllers.split(",")})
                elif cgroups.detect_version() == 2:
                    found["unified"] = (cgroups.v2_root() or cgroups.CGROUP_ROOT) / path.lstrip("/")
            return found
    return {}


async def test_a_spare_cgroup_takes_the_tasks_limits_and_on_v1_its_name(executor, workspace):
    """A task taken by a warm spare runs in the spare's cgroup with its own limits. cgroup v1 then renames that
    cgroup after the task; v2 cannot (only v1 hierarchies implement rename(2)), so it keeps its spare-N name."""
    await executor.warmup()
    assert our_cgroups(spares=True), "warmup made no spares"
    v1 = cgroups.detect_version() == 1
    token = f"named-{uuid.uuid4().hex[:8]}"
    limits = ResourceLimits(memory_bytes=96 << 20, max_processes=33)
    run = asyncio.ensure_future(executor.execute(request(workspace, f"sleep 1; : {token}", task_id="named-task",
                                                         limits=limits)))
    seen: dict[str, Path] = {}
    for _ in range(500):
        await asyncio.sleep(0.01)
        seen = task_cgroups(token)
        if seen and (not v1 or all(p.name.startswith("named-task-") for p in seen.values() if PARENT in p.parts)):
            break
    assert seen, f"the task never ran: {run.done() and run.result()}"
    memory, pids = (seen["memory"], seen["pids"]) if v1 else (seen["unified"], seen["unified"])
    assert (pids / "pids.max").read_text().strip() == "33"
    assert int((memory / ("memory.limit_in_bytes" if v1 else "memory.max")).read_text()) == 96 << 20
    expected_name = "named-task-" if v1 else "spare-"
    assert memory.name.startswith(expected_name) and pids.name.startswith(expected_name), seen
    result = await run
    assert result.exit_code == 0, result
    assert our_cgroups() == []


async def test_a_hundred_tasks_leave_no_cgroup_behind(executor):
    """Completed, failed and timed-out tasks, four at a time: afterwards only the idle spares' cgroups remain,
    by the directories in every hierarchy and, on v2, by the kernel's own count of descendants."""
    await executor.warmup()
    gate = asyncio.Semaphore(4)
    limits = ResourceLimits(memory_bytes=64 << 20, max_processes=16, cpu_cores=0.5)

    async def one(i: int):  # type: ignore[no-untyped-def]
        script, timeout = ("sleep 30", 0.5) if i % 10 == 0 else (f"echo {i}; exit {i % 3}", 30)
        async with gate:
            ws = create_workspace()
            try:
                return await executor.execute(request(ws, script, timeout=timeout, limits=limits))
            finally:
                remove_workspace(ws)

    results = await asyncio.gather(*(one(i) for i in range(100)))
    assert [r.exit_code for r in results] == [124 if i % 10 == 0 else i % 3 for i in range(100)]
    assert our_cgroups() == []
    if cgroups.detect_version() == 2:
        stat = (cgroups.v2_root() / PARENT / "cgroup.stat").read_text()
        assert f"nr_descendants {len(our_cgroups(spares=True))}\n" in stat, stat
