"""Run a task directly on the host (seed 5.4): isolation level Process, honestly.

What it does give: never root (started as root, it runs the task as
``runAsUser``, nobody by default, and refuses uid 0), an environment built from
an allow-list, a session of its own, a timeout that takes the whole process tree down (``reaper.py`` is a child
subreaper, so even a ``setsid`` double-fork is caught), bounded logs, CPU time
and peak RSS from rusage. What it does not: any filesystem, network, memory or
process-count isolation. ``capabilities()`` says exactly that, so selection
uses it only for tasks whose floor is None or Process and which ask for no
limits or network isolation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

from ..api.task import IsolationLevel, NetworkMode
from .base import (
    ExecutionRequest, ExecutionResult, ExecutionStats, ExecutorCapabilities, ExecutorUnavailable, TerminationReason,
)
from .config import HostConfig
from .logs import BoundedBuffer, pump
from .workspace import WorkspaceError, chown_tree, collect_outputs, make_dirs_beneath

_REAPER = Path(__file__).with_name("reaper.py")
NOBODY = 65534
_GRACE_SECONDS = 10.0  # the reaper enforces the timeout; this only guards against a stuck reaper


class HostExecutor:
    name = "host"

    def __init__(self, config: HostConfig | None = None) -> None:
        self.config = config or HostConfig()

    def isolation_level(self) -> IsolationLevel:
        return IsolationLevel.PROCESS

    def capabilities(self) -> ExecutorCapabilities:
        return ExecutorCapabilities(isolation_level=IsolationLevel.PROCESS,
                                    network_policies=frozenset({NetworkMode.FULL}),
                                    seccomp_profiles=frozenset({"Unconfined"}), runs_as_root=False)

    async def health_check(self) -> None:
        if not sys.platform.startswith("linux"):
            raise ExecutorUnavailable(f"the host executor needs Linux (this is {sys.platform})")
        if not _REAPER.is_file():
            raise ExecutorUnavailable(f"{_REAPER} is missing; reinstall expbuild-isolation")

    async def warmup(self) -> None:
        return None

    def environment(self, request: ExecutionRequest) -> dict[str, str]:
        """The allow-listed part of our environment, then the task's own variables."""
        env = {key: os.environ[key] for key in self.config.env_whitelist if key in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update(request.env)
        return env

    async def execute(self, request: ExecutionRequest) -> ExecutionResult:
        cwd = request.workspace / request.working_dir if request.working_dir else request.workspace
        try:
            await asyncio.to_thread(make_dirs_beneath, request.workspace, request.working_dir)
        except WorkspaceError as exc:
            return ExecutionResult(exit_code=127, reason=TerminationReason.START_FAILED, executor=self.name,
                                   isolation_level=IsolationLevel.PROCESS, message=f"working directory: {exc}")
        user = task_user(request)
        if user is not None:
            await asyncio.to_thread(chown_tree, request.workspace, user)
        job = {"argv": list(request.argv), "env": self.environment(request), "cwd": str(cwd),
               "timeout": request.timeout_seconds, "rlimits": self._rlimits(), "user": user}
        report_read, report_write = os.pipe()
        job["report_fd"] = report_write
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", str(_REAPER),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                pass_fds=(report_write,))
        except OSError as exc:
            os.close(report_read)
            os.close(report_write)
            raise ExecutorUnavailable(f"cannot start the reaper: {exc}") from exc
        os.close(report_write)
        stdout = BoundedBuffer(request.log_limit_bytes)
        stderr = BoundedBuffer(request.log_limit_bytes)
        try:
            assert process.stdin is not None and process.stdout is not None and process.stderr is not None
            process.stdin.write(json.dumps(job).encode())
            await process.stdin.drain()
            process.stdin.close()
            guard = request.timeout_seconds + _GRACE_SECONDS if math.isfinite(request.timeout_seconds) else None
            await asyncio.wait_for(
                asyncio.gather(pump(process.stdout, stdout), pump(process.stderr, stderr), process.wait()),
                timeout=guard)
            report = await asyncio.to_thread(_read_all, report_read)
        except BaseException:
            # Cancelled or the reaper hung: SIGTERM makes it kill the tree; SIGKILL if it does not go.
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            with contextlib.suppress(asyncio.TimeoutError, ProcessLookupError):
                await asyncio.wait_for(process.wait(), 5)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise
        finally:
            with contextlib.suppress(OSError):
                os.close(report_read)
        duration = time.monotonic() - started
        try:
            outcome = json.loads(report)
        except ValueError:
            raise ExecutorUnavailable(f"the reaper died without a report (exit {process.returncode}); "
                                      f"stderr: {stderr.text()[-500:]}") from None
        if "error" in outcome:
            raise ExecutorUnavailable(f"host: {outcome['error']}" + (
                "; every process of the task was killed" if "exit_code" in outcome else " (nothing was run)"))
        files, problems = await asyncio.to_thread(collect_outputs, request.workspace, request.output_paths,
                                                  limit=request.output_limit_bytes)
        code = int(outcome["exit_code"])
        return ExecutionResult(
            exit_code=code, reason=_reason(code, outcome["stopped"]), executor=self.name,
            isolation_level=IsolationLevel.PROCESS,
            stdout=stdout.data(), stderr=stderr.data(),
            stdout_truncated=stdout.truncated, stderr_truncated=stderr.truncated,
            output_files=tuple(files), output_problems=tuple(problems),
            stats=ExecutionStats(duration_seconds=duration, cpu_time_seconds=outcome["cpu_time_seconds"],
                                 peak_memory_bytes=outcome["peak_rss_bytes"]),
            message=_message(code, outcome["stopped"], request))

    def _rlimits(self) -> dict[str, tuple[int, int]]:
        limits = self.config.default_limits
        rlimits: dict[str, tuple[int, int]] = {"RLIMIT_CORE": (0, 0)}
        if limits.memory_bytes:
            rlimits["RLIMIT_AS"] = (limits.memory_bytes, limits.memory_bytes)
        if limits.disk_bytes:
            rlimits["RLIMIT_FSIZE"] = (limits.disk_bytes, limits.disk_bytes)
        if limits.max_processes:
            rlimits["RLIMIT_NPROC"] = (limits.max_processes, limits.max_processes)
        return rlimits


def task_user(request: ExecutionRequest) -> int | None:
    """The uid the task runs as: as root, ``runAsUser`` (nobody when unset), never 0; otherwise our own.

    A worker that is not root cannot change users, and is not root: the task runs as the worker's user.
    """
    if os.geteuid() != 0:
        return None
    uid = NOBODY if request.run_as_user is None else request.run_as_user
    if uid == 0:
        raise ExecutorUnavailable("the host executor never runs a task as root (spec.isolation.runAsUser is 0)")
    return uid


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _reason(code: int, stopped: str | None) -> TerminationReason:
    if stopped and stopped.startswith("signal "):
        return TerminationReason.NON_ZERO_EXIT
    if stopped == "deadline":
        return TerminationReason.DEADLINE_EXCEEDED
    if stopped == "cancelled":
        return TerminationReason.CANCELLED
    if code == 0:
        return TerminationReason.COMPLETED
    if code == 127:
        return TerminationReason.START_FAILED
    return TerminationReason.NON_ZERO_EXIT


def _message(code: int, stopped: str | None, request: ExecutionRequest) -> str:
    if stopped == "deadline":
        return f"killed after the {request.timeout_seconds:g}s timeout, with every process it started"
    if stopped == "cancelled":
        return "cancelled"
    if stopped and stopped.startswith("signal "):
        return f"the host executor's reaper was sent {stopped.removeprefix('signal ')}: every process of the " \
               f"task was killed"
    return "" if code == 0 else f"exited with code {code}"
