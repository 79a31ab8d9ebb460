"""The namespace executor against the real kernel: cgroups, mounts, exit codes, stats, cleanup."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from expbuild_isolation.api.task import IsolationLevel, NetworkMode
from expbuild_isolation.executors import cgroups
from expbuild_isolation.executors.base import (ExecutionRequest, IsolationUnavailable, NetworkPolicy, ResourceLimits,
                                               TerminationReason)
from expbuild_isolation.executors.config import NamespaceConfig
from expbuild_isolation.executors.namespace.executor import NamespaceExecutor
from expbuild_isolation.executors.workspace import create_workspace, remove_workspace
from expbuild_isolation.worker.config import ConfigError, load_worker_config

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


# What runc masks (and /proc/kallsyms): kernel state a task has no business reading.
PROC_MASKED = ("acpi", "asound", "kallsyms", "kcore", "keys", "latency_stats", "sched_debug", "scsi", "timer_list",
               "timer_stats")


def _host_has_content(name: str) -> bool:
    path = Path("/proc", name)
    if path.is_dir():
        return any(path.iterdir())
    with open(path, "rb") as handle:
        return bool(handle.read(1))


async def test_kernel_state_in_proc_is_masked(executor, workspace):
    present = [name for name in PROC_MASKED if Path("/proc", name).exists()]
    # positive control: these are there, with content, for the host (and so the copies below could hold it)
    assert {"kallsyms", "timer_list"} <= {name for name in present if _host_has_content(name)}
    copies = "; ".join(f"if [ -d /proc/{n} ]; then ls -A /proc/{n} > {n}.seen; else cat /proc/{n} > {n}.seen; fi"
                       for n in present)
    result = await executor.execute(request(workspace, f"{copies}; cat /proc/version > version.seen; true"))
    assert result.exit_code == 0, result
    assert (workspace / "version.seen").stat().st_size > 0   # the copy works where nothing is masked
    assert {name: (workspace / f"{name}.seen").stat().st_size for name in present} == dict.fromkeys(present, 0)


async def test_the_host_cgroup_path_is_not_visible(executor, workspace):
    task_id = f"cgroup-{uuid.uuid4().hex[:6]}"
    result = await executor.execute(request(workspace, "cat /proc/self/cgroup > cgroup.seen", task_id=task_id))
    assert result.exit_code == 0, result
    lines = (workspace / "cgroup.seen").read_text().splitlines()
    assert lines   # the copy works
    assert [line for line in lines if line.rsplit(":", 1)[1] != "/"] == []   # the task's cgroup is its root


# -- switches in NamespaceConfig: refused when unimplemented, reported truthfully when they weaken ------------

@pytest.mark.parametrize("line, fragment", [
    ("use_user_namespace = true", "executor.namespace.use_user_namespace: the user-namespace mode is not implemented"),
    ("use_mount_namespace = false", "executor.namespace.use_mount_namespace: the sandbox cannot work without"),
])
def test_unimplemented_switches_are_config_errors(tmp_path, line, fragment):
    path = tmp_path / "worker.toml"
    path.write_text(f"[executor]\ntype = 'namespace'\n[executor.namespace]\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_worker_config(path)
    assert fragment in str(caught.value)
    assert "(got " in str(caught.value)


def _listener() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    return listener


def _accepted(listener: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            return count
        conn.close()
        count += 1


async def test_without_a_network_namespace_only_full_is_offered_and_none_is_refused(workspace):
    executor = NamespaceExecutor(NamespaceConfig(cgroup_parent=PARENT, use_network_namespace=False))
    assert executor.capabilities().network_policies == frozenset({NetworkMode.FULL})
    with _listener() as listener:
        script = f"echo hi | /bin/busybox nc -w 2 127.0.0.1 {listener.getsockname()[1]}"
        with pytest.raises(IsolationUnavailable, match="cannot enforce network policy None"):
            await executor.execute(request(workspace, script))
        assert _accepted(listener) == 0
        full = await executor.execute(request(workspace, script, limits=ResourceLimits(
            network=NetworkPolicy(NetworkMode.FULL))))
        assert _accepted(listener) == 1, full   # positive control: the same probe reaches the host when allowed


@pytest.mark.parametrize("switch", ["use_pid_namespace", "use_uts_namespace", "use_ipc_namespace"])
async def test_sharing_a_host_namespace_lowers_the_isolation_level(workspace, switch):
    executor = NamespaceExecutor(NamespaceConfig(cgroup_parent=PARENT, **{switch: False}))
    assert executor.capabilities().isolation_level == executor.isolation_level() == IsolationLevel.FILESYSTEM
    with pytest.raises(IsolationUnavailable, match="isolation Filesystem is below the task's minimum Container"):
        await executor.execute(request(workspace, "true"))
    result = await executor.execute(request(workspace, "true", minimum_isolation=IsolationLevel.FILESYSTEM))
    assert (result.exit_code, result.isolation_level) == (0, IsolationLevel.FILESYSTEM)


async def test_without_a_pid_namespace_host_processes_are_visible(workspace):
    """Why the level drops: what a Container task never sees (tests/isolation: host_processes)."""
    marker = f"host-{uuid.uuid4().hex[:8]}"
    host = subprocess.Popen(["/bin/sh", "-c", "sleep 30", marker])
    try:
        executor = NamespaceExecutor(NamespaceConfig(cgroup_parent=PARENT, use_pid_namespace=False))
        result = await executor.execute(request(workspace, "cat /proc/[0-9]*/cmdline 2>/dev/null; true",
                                                minimum_isolation=IsolationLevel.FILESYSTEM))
        assert marker.encode() in result.stdout
        assert result.isolation_level == IsolationLevel.FILESYSTEM
    finally:
        host.kill()
        host.wait()


def test_all_switches_on_is_container_level(executor):
    caps = executor.capabilities()
    assert caps.isolation_level == IsolationLevel.CONTAINER
    assert caps.network_policies == frozenset({NetworkMode.NONE, NetworkMode.LOCALHOST, NetworkMode.FULL})


def _busybox_root(path: Path) -> Path:
    (path / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", path / "bin" / "busybox")
    os.symlink("busybox", path / "bin" / "sh")
    return path


def _tree(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.lstat().st_mtime_ns for p in path.rglob("*")}


async def test_a_writable_directory_rootfs_gives_each_task_a_private_layer(tmp_path):
    root = _busybox_root(tmp_path / "rootfs")
    (root / "etc").mkdir()
    (root / "etc" / "motd").write_text("hello\n")
    before = _tree(root)
    executor = NamespaceExecutor(NamespaceConfig(cgroup_parent=PARENT, rootfs=str(root)))

    async def run(script: str):  # type: ignore[no-untyped-def]
        ws = create_workspace()
        try:
            return await executor.execute(ExecutionRequest(
                task_id=f"layer-{uuid.uuid4().hex[:6]}", argv=("/bin/sh", "-c", script), workspace=ws,
                env={"PATH": "/bin"}, read_only_root=False, run_as_user=None, timeout_seconds=20))
        finally:
            remove_workspace(ws)

    first = await run("echo mine > /planted && echo more >> /etc/motd && /bin/busybox cat /planted /etc/motd")
    assert (first.exit_code, first.stdout) == (0, b"mine\nhello\nmore\n"), first   # it could write its root ...
    second = await run("/bin/busybox cat /planted; /bin/busybox cat /etc/motd")
    assert second.stdout == b"hello\n", second   # ... a later task sees none of it ...
    assert _tree(root) == before   # ... and the host directory is exactly as it was


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
