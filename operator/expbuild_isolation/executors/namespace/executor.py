"""The namespace executor: Linux namespaces + cgroups + seccomp, no container runtime.

Each task gets its own cgroup (limits set before any task code runs in it), new
PID, mount, network, UTS and IPC namespaces, a fresh root (read-only binds of
the host's /usr, /bin, /lib* and a minimal /etc, or a directory), the workspace
at /workspace, a fresh /proc, a minimal /dev, a size-limited noexec /tmp, no
capabilities, no_new_privs, a non-root uid and a seccomp filter. The launch
itself is done by the zygote in ``nsinit.py``; this module decides, waits, kills
and reports.

Start latency: a task takes a spare sandbox kept warm for its shape
(``spares.py``; ``EXPBUILD_NAMESPACE_SPARES=0`` turns the pool off), writes its
limits and hands over its spec and pipes. ``EXPBUILD_NSINIT_TRACE=<file>`` logs
every phase's CLOCK_MONOTONIC time from all processes involved.

Network: None gives a network namespace whose loopback stays *down* (even
127.0.0.1 is unreachable); Localhost brings lo up, alone; Full shares the host
network; Restricted is not offered (no per-task firewall here).

What it claims follows its configuration (``capabilities()``): a namespace
switched off in ``NamespaceConfig`` lowers the isolation level or the network
policies offered, and ``execute`` refuses a task those do not cover, as
selection would.

Disk: with a disk limit the workspace moves onto a host tmpfs of that size,
shared with the task's /tmp, and stays there until it is removed; nothing is
copied back (``disk_limit.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

from ...api.task import IsolationLevel, NetworkMode
from .. import cgroups, linux, seccomp
from . import nsinit
from ..base import (ExecutionRequest, ExecutionResult, ExecutionStats, ExecutorCapabilities, ExecutorUnavailable,
                   IsolationUnavailable, TerminationReason)
from .cgroup_join import join_problem
from ..config import NamespaceConfig
from ..workspace import chown_tree
from .disk_limit import DiskTooSmall, make_disk, release_disk, sweep_disks
from .launch import DEFAULT_PATH, LaunchSpec, effective_namespaces
from ..select import unmet_requirements
from ..logs import BoundedBuffer
from .spares import (POOL, SPARES_PER_SHAPE, Shape, Spare, Zygote, open_tree_works, remove_quietly, spare_in,
                     unique_suffix)
from ..workspace import collect_outputs


# The sandbox's own deadline, past the task's timeout: the worker normally ends the task at its timeout; this
# ends it too if the worker is gone or stuck (a node agent killed mid-task must not leave its work running).
SANDBOX_DEADLINE_GRACE_SECONDS = 10.0

class NamespaceExecutor:
    name = "namespace"

    def __init__(self, config: NamespaceConfig | None = None) -> None:
        self.config = config or NamespaceConfig()
        self.cgroup_parent = self.config.cgroup_parent or "expbuild"
        self._defaults = self.config.default_limits.to_limits()
        self._problem = self._find_problem()
        if self._problem is None:
            self.sweep()

    # -- the contract -------------------------------------------------------------------------

    def isolation_level(self) -> IsolationLevel:
        """Container with every namespace; Filesystem (own root, shared processes, hostname or IPC) without
        the pid, uts or ipc one. The network namespace shows in the network policies instead."""
        config = self.config
        shared = not (config.use_pid_namespace and config.use_uts_namespace and config.use_ipc_namespace)
        return IsolationLevel.FILESYSTEM if shared else IsolationLevel.CONTAINER

    def capabilities(self) -> ExecutorCapabilities:
        networks = {NetworkMode.NONE, NetworkMode.LOCALHOST, NetworkMode.FULL}
        return ExecutorCapabilities(
            isolation_level=self.isolation_level(), supports_cpu_limit=True, supports_memory_limit=True,
            supports_disk_limit=True, supports_pids_limit=True,
            network_policies=frozenset(networks if self.config.use_network_namespace else {NetworkMode.FULL}),
            supports_readonly_rootfs=True,
            seccomp_profiles=frozenset({"RuntimeDefault", "expbuild-default", "expbuild-strict", "Unconfined"}),
            uses_image=False)

    async def health_check(self) -> None:
        if self._problem:
            raise ExecutorUnavailable(self._problem)
        await asyncio.to_thread(Zygote.ensure)

    async def warmup(self) -> None:
        await self.health_check()
        if SPARES_PER_SHAPE > 0:
            try:
                await asyncio.to_thread(POOL.fill, self._shape(NetworkMode.NONE))
            except (cgroups.CgroupError, OSError):
                pass   # no spares: each task makes its own cgroup and launcher, and reports what fails

    def sweep(self) -> None:
        """Remove what a crashed worker left: cgroups (killing their processes) and disk tmpfs mounts."""
        cgroups.sweep(self.cgroup_parent)
        sweep_disks()

    async def execute(self, request: ExecutionRequest) -> ExecutionResult:
        if self._problem:
            raise ExecutorUnavailable(self._problem)
        missing = unmet_requirements(self.capabilities(), request)
        if missing:
            raise IsolationUnavailable(f"{self.name}: " + "; ".join(missing))
        profile = seccomp.resolve_profile_name(request.seccomp_profile)
        limits = request.limits.merged_over(self._defaults)
        started = time.monotonic()
        unique = unique_suffix()
        shape = self._shape(request.limits.network.mode)
        nsinit.trace("x.start")
        # A spare from the pool only needs its limits written (cgroupfs writes that take no cgroup-wide
        # lock): done here, no thread hop. Making a cgroup and a launcher now goes to a thread.
        spare = self._take(limits, shape)
        if spare is None:
            spare = await asyncio.to_thread(self._claim, request.task_id, unique, limits, shape)
        nsinit.trace("x.claimed", spare.slot)
        group = spare.group
        disk = None
        outcome: dict = {"timed_out": False, "readers": [], "launched": False}
        try:
            workspace = request.workspace
            if limits.disk_bytes is not None:
                try:
                    disk = await asyncio.to_thread(make_disk, f"{unique[1:]}.{os.getpid()}", request,
                                                   limits.disk_bytes)
                except DiskTooSmall as exc:
                    return ExecutionResult(exit_code=127, reason=TerminationReason.START_FAILED, executor=self.name,
                                           isolation_level=self.isolation_level(), message=str(exc))
                workspace = disk / "ws"
            elif request.run_as_user is not None:
                await asyncio.to_thread(chown_tree, workspace, request.run_as_user)
            spec = self._spec(request, workspace, group, profile, disk)
            await self._run(spec, request, outcome, spare, shape, (request.task_id, unique))
        finally:
            if not outcome["launched"]:
                spare.discard()
            if "renaming" in outcome:
                with contextlib.suppress(Exception):
                    await outcome["renaming"]
            nsinit.trace("x.end", spare.slot)
            # After a normal end pid 1 is gone and the kernel has killed the rest of its PID namespace:
            # only the exiting launcher can still be in the cgroup, so let it leave before freezing.
            settle = outcome["launched"] and not outcome["timed_out"] and "pid" in shape.namespaces
            stats = await asyncio.to_thread(_end, group, settle)
            nsinit.trace("x.ended", spare.slot)
            outcome["results"] = await _finish(outcome["readers"])
            if disk is not None:
                await asyncio.to_thread(release_disk, disk)
        nsinit.trace("x.done", spare.slot)
        if SPARES_PER_SHAPE > 0:
            POOL.want(shape)   # replaced now that this task is done, not while it starts
        files, problems = await asyncio.to_thread(collect_outputs, request.workspace, request.output_paths,
                                                  limit=request.output_limit_bytes)
        result = self._result(request, outcome, stats, time.monotonic() - started, files, problems)
        nsinit.trace("x.return", spare.slot)
        return result

    # -- pieces ------------------------------------------------------------------------------------

    def _find_problem(self) -> str | None:
        if sys.platform != "linux":
            return f"needs Linux namespaces; this is {sys.platform}"
        if os.geteuid() != 0:
            return (f"needs root or unprivileged user namespaces (the user-namespace mode is not implemented); "
                    f"running as uid {os.geteuid()}")
        if platform.machine() not in linux.SYS_PIVOT_ROOT:
            return f"needs x86_64 or aarch64 syscall numbers; this is {platform.machine()}"
        try:
            cgroups.detect_version()
        except cgroups.CgroupError as exc:
            return f"needs root or unprivileged user namespaces and cgroups: {exc}"
        problem = join_problem(self.cgroup_parent)
        if problem:
            return f"cannot place tasks in cgroups: {problem}"
        try:
            import pyseccomp  # noqa: F401
        except (ImportError, OSError) as exc:
            return f"needs libseccomp (pyseccomp): {exc}"
        for profile in seccomp.PROFILES.values():
            try:
                seccomp.check_names(profile)
            except seccomp.SeccompProfileError as exc:
                return f"cannot build its seccomp filters: {exc}"
        if self.config.rootfs != "host" and not Path(self.config.rootfs, "bin").exists():
            return f"rootfs {self.config.rootfs!r} has no bin/; set rootfs to \"host\" or a root filesystem directory"
        return None

    def _namespaces(self) -> list[str]:
        return [name for name, on in (("pid", self.config.use_pid_namespace),
                                      ("mount", self.config.use_mount_namespace),
                                      ("net", self.config.use_network_namespace),
                                      ("uts", self.config.use_uts_namespace),
                                      ("ipc", self.config.use_ipc_namespace)) if on]

    def _shape(self, network: NetworkMode) -> Shape:
        namespaces = tuple(effective_namespaces(self._namespaces(), _NETWORK[network]))
        return Shape(self.cgroup_parent, namespaces, self.config.rootfs, self.config.tmp_size_bytes,
                     host_network=network == NetworkMode.FULL,
                     pivot_early="mount" in namespaces and open_tree_works())

    def _claim(self, task_id: str, unique: str, limits, shape: Shape) -> Spare:  # type: ignore[no-untyped-def]
        """The task's cgroup, limited, with a launcher in it: a spare from the pool, else one made now.

        A made-now cgroup gets its limits before anything joins it; a spare's cgroup holds only the
        launcher (its own code, no task yet) when the limits are set, before the task is handed over.
        """
        spare = self._take(limits, shape)
        if spare is not None:
            return spare
        group = cgroups.TaskCgroup.create(task_id, parent=self.cgroup_parent, unique=unique)
        try:
            self._limit(group, limits)
            return spare_in(group, shape)
        except BaseException:
            remove_quietly(group)
            raise

    def _take(self, limits, shape: Shape) -> Spare | None:  # type: ignore[no-untyped-def]
        spare = POOL.take(shape) if SPARES_PER_SHAPE > 0 else None
        if spare is None:
            return None
        try:
            self._limit(spare.group, limits)
        except cgroups.CgroupError:
            POOL.drop(spare)
            return None
        spare.pooled = True   # renamed to the task's name once it runs (off its start path)
        return spare

    @staticmethod
    def _limit(group: cgroups.TaskCgroup, limits) -> None:  # type: ignore[no-untyped-def]
        group.set_limits(memory_bytes=limits.memory_bytes, max_processes=limits.max_processes,
                         cpu_cores=limits.cpu_cores)

    def _spec(self, request: ExecutionRequest, workspace: Path, group: cgroups.TaskCgroup, profile: str | None,
              disk: Path | None) -> LaunchSpec:
        env = {"PATH": DEFAULT_PATH, "HOME": "/workspace", "TMPDIR": "/tmp", **request.env}
        namespaces = self._namespaces()
        network = _NETWORK[request.limits.network.mode]
        uid = request.run_as_user
        return LaunchSpec(
            argv=list(request.argv), env=env, cwd=str(Path("/workspace", request.working_dir)),
            workspace=str(workspace), cgroup_procs=[str(p) for p in group.procs_files], rootfs=self.config.rootfs,
            tmp_source=str(disk / "tmp") if disk else None, tmp_size_bytes=self.config.tmp_size_bytes,
            network=network, uid=uid, gid=uid, seccomp_profile=profile, read_only_root=request.read_only_root,
            namespaces=namespaces, deadline_seconds=request.timeout_seconds + SANDBOX_DEADLINE_GRACE_SECONDS)

    async def _run(self, spec: LaunchSpec, request: ExecutionRequest, outcome: dict, spare: Spare,
                   shape: Shape, name: tuple[str, str]) -> None:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        status_r, status_w = os.pipe()
        trees = []
        if "mount" in shape.namespaces:
            for tree, path in (("workspace", spec.workspace), ("tmp", spec.tmp_source)):
                fd = linux.open_tree(path) if path else None
                if fd is not None:
                    spec.trees.append(tree)
                    trees.append(fd)
        try:
            nsinit.trace("x.send", spare.slot)
            launched = spare.launch(spec, [out_w, err_w, status_w, *trees])
            if not launched:   # the spare died: a new launcher in the same cgroup
                retry = await asyncio.to_thread(spare_in, spare.group, shape)
                launched = retry.launch(spec, [out_w, err_w, status_w, *trees])
            outcome["launched"] = launched
        finally:
            for fd in (out_w, err_w, status_w, *trees):
                os.close(fd)
        if spare.pooled:
            outcome["renaming"] = asyncio.ensure_future(asyncio.to_thread(spare.group.rename, *name))
        limit = request.log_limit_bytes
        readers = [_read_bounded(fd, size) for fd, size in ((out_r, limit), (err_r, limit), (status_r, 1 << 16))]
        outcome["readers"] = readers
        try:
            await asyncio.wait_for(asyncio.shield(readers[2]), request.timeout_seconds)
            nsinit.trace("x.status", spare.slot)
        except asyncio.TimeoutError:
            outcome["timed_out"] = True

    def _result(self, request: ExecutionRequest, outcome: dict, stats: cgroups.CgroupStats, duration: float,
                files, problems) -> ExecutionResult:  # type: ignore[no-untyped-def]
        (stdout, out_trunc), (stderr, err_trunc), (status, _) = outcome["results"]
        lines = status.decode(errors="replace").splitlines()
        errors = [line for line in lines if "-error: " in line]
        ends = [line for line in lines if line.startswith(("exit ", "signal "))]
        message = ""
        if outcome["timed_out"]:
            code, reason = 124, TerminationReason.DEADLINE_EXCEEDED
            message = f"killed after the {request.timeout_seconds:g}s timeout"
        elif stats.oom_killed:
            code, reason, message = 137, TerminationReason.OOM_KILLED, "killed by the kernel at the memory limit"
        elif errors:
            stage, _, detail = errors[0].partition("-error: ")
            if stage == "exec":   # the task's own program could not start
                code, reason, message = 127, TerminationReason.START_FAILED, detail
            else:                 # the sandbox could not be built: a privilege or the kernel, not the task
                code, reason = 127, TerminationReason.SANDBOX_FAILED
                message = f"the sandbox could not be set up: {detail}"
        elif ends:
            kind, number = ends[-1].split()
            code = int(number) if kind == "exit" else 128 + int(number)
            reason = TerminationReason.COMPLETED if code == 0 else TerminationReason.NON_ZERO_EXIT
            if code != 0 and stats.pids_limit_hit:
                reason, message = TerminationReason.PIDS_LIMIT, "a fork was refused at the pids limit"
        else:
            code, reason, message = 137, TerminationReason.NON_ZERO_EXIT, "the launcher was killed"
        return ExecutionResult(
            exit_code=code, reason=reason, executor=self.name, isolation_level=self.isolation_level(),
            stdout=stdout, stderr=stderr, stdout_truncated=out_trunc, stderr_truncated=err_trunc,
            output_files=tuple(files), output_problems=tuple(problems), message=message,
            stats=ExecutionStats(duration_seconds=duration, cpu_time_seconds=stats.cpu_time_seconds,
                                 peak_memory_bytes=stats.peak_memory_bytes, disk_read_bytes=stats.disk_read_bytes,
                                 disk_write_bytes=stats.disk_write_bytes))


async def _finish(readers: list[asyncio.Future]) -> list[tuple[bytes, bool]]:
    """The readers' results once the cgroup is dead (every writer gone); empty output if one still hangs."""
    if not readers:
        return [(b"", False)] * 3
    if all(f.done() for f in readers):
        return [f.result() if not f.cancelled() and not f.exception() else (b"", False) for f in readers]
    done, pending = await asyncio.wait(readers, timeout=10)
    for future in pending:
        future.cancel()
    return [f.result() if f in done and not f.exception() else (b"", False) for f in readers]


def _read_bounded(fd: int, limit: int) -> asyncio.Future:
    """Read a pipe to EOF, keeping its last ``limit`` bytes (draining the rest so the writer never blocks);
    the future's result is (bytes, truncated). A bare reader callback, not a transport: the task's end is
    one wakeup away from the executor."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()
    kept = BoundedBuffer(limit)
    os.set_blocking(fd, False)

    def done() -> None:
        loop.remove_reader(fd)
        os.close(fd)

    def readable() -> None:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            done()
            if not future.done():
                future.set_exception(exc)
            return
        if chunk:
            kept.feed(chunk)
            return
        done()
        if not future.done():
            future.set_result((kept.data(), kept.truncated))

    def cancelled(f: asyncio.Future) -> None:
        if f.cancelled():
            with contextlib.suppress(OSError, ValueError):
                done()

    loop.add_reader(fd, readable)
    future.add_done_callback(cancelled)
    return future


_NETWORK = {NetworkMode.NONE: "none", NetworkMode.LOCALHOST: "localhost", NetworkMode.FULL: "full",
            NetworkMode.RESTRICTED: "none"}


def _end(group: cgroups.TaskCgroup, settle: bool) -> cgroups.CgroupStats:
    """Kill what is left in the task's cgroup, read what it used, remove it.

    ``settle``: the task has ended and its PID namespace with it, so what it used is final already;
    read that while the launcher leaves the cgroup, then make sure it is empty."""
    if settle:
        stats = group.stats()
        group.kill(settle_seconds=0.01)
    else:
        group.kill()
        stats = group.stats()
    remove_quietly(group)
    return stats
