"""The host executor keeps its promises: whole-tree timeout, bounded logs, honest capabilities."""

import asyncio
import os
import time
import uuid

import pytest
from expbuild_isolation.api.task import IsolationLevel, NetworkMode
from expbuild_isolation.executors.base import ExecutionRequest, TerminationReason
from expbuild_isolation.executors.config import HostConfig
from expbuild_isolation.executors.host import HostExecutor
from expbuild_isolation.executors.workspace import create_workspace, remove_workspace
from expbuild_isolation.selftest.host_side import processes_with


@pytest.fixture
def workspace():
    path = create_workspace()
    yield path
    remove_workspace(path)


def request(workspace, *argv, **kw):
    return ExecutionRequest(task_id=f"t-{uuid.uuid4().hex[:8]}", argv=tuple(argv), workspace=workspace,
                            minimum_isolation=IsolationLevel.NONE, **kw)


async def test_exit_code_stdout_and_stderr_are_reported(workspace):
    result = await HostExecutor().execute(request(workspace, "sh", "-c", "echo out; echo err >&2; exit 7"))
    assert (result.exit_code, result.reason) == (7, TerminationReason.NON_ZERO_EXIT)
    assert result.stdout == b"out\n" and result.stderr == b"err\n"
    assert result.executor == "host" and result.isolation_level is IsolationLevel.PROCESS


async def test_timeout_kills_a_setsid_grandchild_too(workspace):
    marker = f"xt-marker-{uuid.uuid4().hex}"
    script = f"(setsid sh -c 'sleep 300; echo {marker}' &) ; (sh -c 'sleep 301 {marker}' &) ; sleep 302"
    started = time.monotonic()
    result = await HostExecutor().execute(request(workspace, "sh", "-c", script, timeout_seconds=1.0))
    assert time.monotonic() - started < 5
    assert (result.exit_code, result.reason) == (124, TerminationReason.DEADLINE_EXCEEDED)
    assert "timeout" in result.message
    assert processes_with(marker) == []


async def test_a_daemon_left_behind_after_a_normal_exit_is_killed(workspace):
    marker = f"xt-daemon-{uuid.uuid4().hex}"
    script = f"(setsid sh -c 'sleep 300 # {marker}' > /dev/null 2>&1 &); echo started"
    result = await HostExecutor().execute(request(workspace, "sh", "-c", script, timeout_seconds=10))
    assert result.exit_code == 0 and result.stdout == b"started\n"
    assert processes_with(marker) == []


async def test_cancelling_the_caller_kills_the_tree(workspace):
    marker = f"xt-cancel-{uuid.uuid4().hex}"
    task = asyncio.create_task(HostExecutor().execute(
        request(workspace, "sh", "-c", f"(setsid sh -c 'sleep 300 # {marker}' &); sleep 300")))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if not processes_with(marker):
            break
        await asyncio.sleep(0.05)
    assert processes_with(marker) == []


async def test_logs_are_bounded_and_keep_the_tail(workspace):
    script = "i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done"
    result = await HostExecutor().execute(request(workspace, "sh", "-c", script, log_limit_bytes=100))
    assert len(result.stdout) == 100 and result.stdout_truncated
    assert result.stdout.endswith(b"line-1999\n")


async def test_environment_is_an_allow_list(workspace, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    result = await HostExecutor(HostConfig(env_whitelist=["PATH"])).execute(
        request(workspace, "sh", "-c", "env", env={"CC": "gcc"}))
    assert b"hunter2" not in result.stdout
    assert b"CC=gcc" in result.stdout


async def test_missing_program_is_exit_127(workspace):
    result = await HostExecutor().execute(request(workspace, "no-such-program-xyz"))
    assert (result.exit_code, result.reason) == (127, TerminationReason.START_FAILED)
    assert b"no-such-program-xyz" in result.stderr


async def test_cpu_time_and_peak_memory_come_from_rusage(workspace):
    result = await HostExecutor().execute(request(
        workspace, "sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"))
    assert result.stats.cpu_time_seconds > 0.05
    assert result.stats.peak_memory_bytes > 1 << 20
    assert result.stats.duration_seconds >= result.stats.cpu_time_seconds * 0.5


async def test_signal_death_is_128_plus_signal(workspace):
    result = await HostExecutor().execute(request(workspace, "sh", "-c", "kill -9 $$"))
    assert result.exit_code == 137


async def test_outputs_are_collected_in_the_working_dir(workspace):
    result = await HostExecutor().execute(request(
        workspace, "sh", "-c", "mkdir -p out && printf abc > out/app && chmod +x out/app",
        output_paths=("out/app",)))
    [out] = result.output_files
    assert (out.path, out.size_bytes, out.executable) == ("out/app", 3, True)
    assert out.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_capabilities_are_honest():
    caps = HostExecutor().capabilities()
    assert caps.isolation_level is IsolationLevel.PROCESS
    assert not (caps.supports_memory_limit or caps.supports_cpu_limit or caps.supports_pids_limit
                or caps.supports_disk_limit or caps.supports_readonly_rootfs)
    assert caps.network_policies == frozenset({NetworkMode.FULL})


def kill_marked(marker: str) -> list[int]:
    """SIGKILL what a failed test left running (so one failure does not leak into the next test)."""
    found = processes_with(marker)
    for pid in found:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return found


async def test_a_huge_timeout_runs_the_task_and_leaves_no_process(workspace):
    """999999999999h overflowed sigtimedwait: the reaper died with a traceback and its tree was orphaned."""
    marker = f"xt-huge-{uuid.uuid4().hex}"
    script = f"(setsid sh -c 'sleep 300 # {marker}' > /dev/null 2>&1 &); sleep 0.2; echo done"
    try:
        result = await HostExecutor().execute(request(workspace, "sh", "-c", script,
                                                      timeout_seconds=999999999999 * 3600.0))
        await asyncio.sleep(0.2)
        assert processes_with(marker) == []
    finally:
        kill_marked(marker)
    assert (result.exit_code, result.reason, result.stdout) == (0, TerminationReason.COMPLETED, b"done\n")
    assert b"Traceback" not in result.stderr and "Traceback" not in result.message


async def test_a_task_that_signals_its_reaper_still_loses_its_whole_tree(workspace):
    """SIGUSR1/SIGHUP (default action: terminate) killed the reaper and orphaned the task's processes.

    A worker started as root runs the task as nobody, which may not signal the root reaper at all; a worker
    that is not root shares its uid with the task, and the reaper must then survive the signal itself.
    """
    marker = f"xt-usr1-{uuid.uuid4().hex}"
    script = (f"(setsid sh -c 'sleep 300 # {marker}' > /dev/null 2>&1 &); sleep 0.2; "
              f"kill -USR1 $PPID 2>/dev/null || {{ echo refused; exit 0; }}; sleep 30")
    try:
        result = await HostExecutor().execute(request(workspace, "sh", "-c", script, timeout_seconds=20))
        await asyncio.sleep(0.2)
        assert processes_with(marker) == []
    finally:
        kill_marked(marker)
    if os.geteuid() == 0:
        assert result.reason is TerminationReason.COMPLETED and result.stdout == b"refused\n", result
    else:
        assert result.reason is TerminationReason.NON_ZERO_EXIT and "SIGUSR1" in result.message, result
    assert result.stats.duration_seconds < 10


def run_reaper(job: dict) -> tuple[int, str, dict]:
    """reaper.py run by hand with ``job`` on stdin; returns (exit status, stderr, its report)."""
    import json
    import subprocess
    import sys

    from expbuild_isolation.executors import host
    report_read, report_write = os.pipe()
    try:
        proc = subprocess.run([sys.executable, "-I", "-S", str(host._REAPER)],  # noqa: SLF001
                              input=json.dumps({**job, "report_fd": report_write}).encode(),
                              capture_output=True, pass_fds=(report_write,), timeout=30)
    finally:
        os.close(report_write)
    with os.fdopen(report_read) as handle:
        text = handle.read()
    return proc.returncode, proc.stderr.decode(), json.loads(text) if text else {}


@pytest.mark.parametrize("timeout", ["soon", float("nan"), -1, None])
def test_a_job_the_reaper_cannot_time_is_refused_before_anything_runs(workspace, timeout):
    marker = f"xt-badjob-{uuid.uuid4().hex}"
    job = {"argv": ["sh", "-c", f"(setsid sh -c 'sleep 300 # {marker}' > /dev/null 2>&1 &); sleep 300"],
           "env": {"PATH": "/usr/bin:/bin"}, "cwd": str(workspace), "timeout": timeout, "rlimits": {}}
    try:
        code, stderr, report = run_reaper(job)
        time.sleep(0.3)
        assert processes_with(marker) == []
    finally:
        kill_marked(marker)
    assert "Traceback" not in stderr
    assert "timeout" in report.get("error", ""), report


async def test_the_working_directory_is_not_created_through_a_workspace_symlink(workspace, tmp_path):
    os.symlink(tmp_path, workspace / "src")                # e.g. a REAPI input symlink with any target
    result = await HostExecutor().execute(request(workspace, "sh", "-c", "pwd", working_dir="src/build"))
    assert list(tmp_path.iterdir()) == []
    assert result.reason is TerminationReason.START_FAILED and "'src' is a symlink" in result.message, result
    made = await HostExecutor().execute(request(workspace, "sh", "-c", "pwd", working_dir="real/build"))
    assert made.stdout.decode().strip() == str(workspace / "real" / "build")      # the positive control
