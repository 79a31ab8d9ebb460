"""The namespace executor: Linux namespaces + cgroups + seccomp, no container runtime.

Each task gets its own cgroup (limits set before any task code runs in it), new
PID, mount, network, UTS and IPC namespaces, a fresh root (read-only binds of
the host's /usr, /bin, /lib* and a minimal /etc, or a directory), the workspace
at /workspace, a fresh /proc, a minimal /dev, a size-limited noexec /tmp, no
capabilities, no_new_privs, a non-root uid and a seccomp filter. The launch
itself is done by the zygote in ``nsinit.py``; this module decides, waits, kills
and reports.

Start latency: a process-wide pool keeps ``SPARES_PER_SHAPE`` spare sandboxes
(each in a fresh cgroup, namespaces made, root built and pivoted, nothing of a
task yet) per shape; a task takes one, writes its limits, hands over its spec
and pipes, and a daemon thread makes the replacement after the task ends. A
task whose shape has no spare gets one made on the spot. Spare cgroups are
named ``spare-N.<worker pid>`` until taken, then renamed after the task.
``EXPBUILD_NAMESPACE_SPARES=0`` turns the pool off; ``EXPBUILD_NSINIT_TRACE=<file>``
logs every phase's CLOCK_MONOTONIC time from all processes involved.

Network: None gives a network namespace whose loopback stays *down* (even
127.0.0.1 is unreachable); Localhost brings lo up, alone; Full shares the host
network; Restricted is not offered (no per-task firewall here).

Disk: with a disk limit the workspace is copied into a host tmpfs of that size
(which also holds /tmp, so the two share the limit), the task runs there, and
what it leaves is copied back afterwards; tmpfs pages also count against the
memory limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..api.task import IsolationLevel, NetworkMode
from . import cgroups, linux, nsinit, seccomp
from .base import (ExecutionRequest, ExecutionResult, ExecutionStats, ExecutorCapabilities, ExecutorUnavailable,
                   TerminationReason)
from .config import NamespaceConfig
from .launch import DEFAULT_PATH, LaunchSpec, Prepared, effective_namespaces
from .sandbox_root import LAUNCH_ROOT
from .workspace import collect_outputs

DISK_ROOT = Path(LAUNCH_ROOT) / "disk"
_sequence = itertools.count()
SPARES_PER_SHAPE = int(os.environ.get("EXPBUILD_NAMESPACE_SPARES", "2"))   # 0: every task waits for its own
SPARE_MAX_AGE = 60.0


class _Zygote:
    """The process-wide launcher; restarted if it dies. It only forks spares: a task goes straight from
    the executor to its spare's socket, so the spares made by a zygote that died still work."""

    _lock = threading.Lock()
    _process: subprocess.Popen | None = None
    _socket: socket.socket | None = None
    _slots = itertools.count()

    @classmethod
    def _alive(cls) -> bool:
        return cls._process is not None and cls._process.poll() is None

    @classmethod
    def prepare(cls, prepared: Prepared) -> tuple[int, socket.socket]:
        """Fork a spare that joins ``prepared.cgroup_procs`` (sent open: the cgroup may be renamed before
        the spare gets to it); returns its slot number (for traces) and the socket its task goes to."""
        fds: list[int] = []
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            fds.append(theirs.detach())
            for procs in prepared.cgroup_procs:
                try:
                    fds.append(os.open(procs, os.O_WRONLY | os.O_CLOEXEC))
                except OSError as exc:
                    raise cgroups.CgroupError(f"cannot open {procs}: {exc.strerror}") from None
            with cls._lock:
                for attempt in range(2):
                    if not cls._alive():
                        cls._start()
                    slot = next(cls._slots)
                    try:
                        assert cls._socket is not None
                        socket.send_fds(cls._socket, [json.dumps({"op": "prepare", "slot": slot,
                                                                  "prepared": asdict(prepared)}).encode()], fds)
                        return slot, ours
                    except OSError:
                        if attempt:
                            raise
                        cls._stop()
        except BaseException:
            ours.close()
            raise
        finally:
            for fd in fds:
                os.close(fd)
        raise AssertionError("unreachable")

    @classmethod
    def _stop(cls) -> None:
        if cls._process is not None and cls._process.poll() is None:
            cls._process.kill()
        if cls._socket is not None:
            cls._socket.close()
        cls._process = cls._socket = None

    @classmethod
    def _start(cls) -> None:
        cls._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        package_root = str(Path(__file__).resolve().parents[2])
        env = {"PATH": DEFAULT_PATH, "PYTHONPATH": package_root, "PYTHONDONTWRITEBYTECODE": "1"}
        for name in ("EXPBUILD_NSINIT_TRACE", "EXPBUILD_NAMESPACE_SPARE_NICE"):
            if name in os.environ:
                env[name] = os.environ[name]
        nsinit.open_trace()
        cls._process = subprocess.Popen(
            [sys.executable, "-m", "expbuild_isolation.executors.nsinit", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL, cwd="/")
        theirs.close()
        cls._socket = ours

    @classmethod
    def ensure(cls) -> None:
        with cls._lock:
            if not cls._alive():
                cls._start()


@dataclass
class _Spare:
    """A launcher in a cgroup of its own, waiting on ``sock`` for one task."""

    slot: int
    sock: socket.socket
    group: cgroups.TaskCgroup
    made: float
    pooled: bool = False

    def launch(self, spec: LaunchSpec, fds: list[int]) -> bool:
        """Hand the task over; False if the spare is gone (the caller makes another in the same cgroup)."""
        try:
            socket.send_fds(self.sock, [spec.to_bytes()], fds)
            return True
        except OSError:
            return False
        finally:
            self.sock.close()

    def discard(self) -> None:
        self.sock.close()   # the spare sees EOF and exits


@dataclass(frozen=True)
class _Shape:
    """What a spare is built for; a task whose shape differs gets a spare made on the spot."""

    parent: str
    namespaces: tuple[str, ...]
    rootfs: str
    shm_size_bytes: int
    host_network: bool
    pivot_early: bool


class _SparePool:
    """Process-wide spares: per shape, launchers that have unshared their namespaces, joined a fresh
    cgroup and built and pivoted into the task-independent part of the root, waiting for a task. Taking one removes the
    cgroup join (an RCU grace period on cgroup v1), the forks, unshare and ~30 mounts from a task's
    start; one daemon thread refills. A spare older than ``SPARE_MAX_AGE`` is replaced (its binds of the
    host's /etc files would be stale)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spares: dict[_Shape, list[_Spare]] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._filling = threading.Lock()   # one filler at a time (warmup and the thread), or both overshoot

    def take(self, shape: _Shape) -> _Spare | None:
        while True:
            with self._lock:
                spares = self._spares.setdefault(shape, [])
                spare = spares.pop(0) if spares else None
            if spare is None:
                return None
            if time.monotonic() - spare.made < SPARE_MAX_AGE:
                return spare
            self._drop(spare)

    def want(self, shape: _Shape) -> None:
        with self._lock:
            self._spares.setdefault(shape, [])
        self._kick()

    def fill(self, shape: _Shape) -> None:
        """Make spares for ``shape`` until there are SPARES_PER_SHAPE (in the calling thread)."""
        with self._lock:
            self._spares.setdefault(shape, [])
        with self._filling:
            while True:
                with self._lock:
                    if len(self._spares[shape]) >= SPARES_PER_SHAPE:
                        return
                spare = make_spare(shape)
                with self._lock:
                    self._spares[shape].append(spare)

    def _kick(self) -> None:
        if SPARES_PER_SHAPE <= 0:
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="namespace-spares", daemon=True)
            self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(timeout=SPARE_MAX_AGE / 2)
            self._wake.clear()
            with self._lock:
                shapes = list(self._spares)
                stale = []
                for spares in self._spares.values():
                    keep = [s for s in spares if time.monotonic() - s.made < SPARE_MAX_AGE]
                    stale += [s for s in spares if s not in keep]
                    spares[:] = keep
            for spare in stale:
                self._drop(spare)
            for shape in shapes:
                try:
                    self.fill(shape)
                except (cgroups.CgroupError, OSError):
                    continue   # tried again on the next task or in SPARE_MAX_AGE / 2

    @staticmethod
    def _drop(spare: _Spare) -> None:
        spare.discard()
        _quietly(spare.group.remove)


def make_spare(shape: _Shape) -> _Spare:
    """A fresh cgroup (no limits yet) and a spare launcher inside it."""
    group = cgroups.TaskCgroup.create("spare", parent=shape.parent, unique=f"-{next(_sequence)}")
    try:
        slot, sock = _Zygote.prepare(_prepared(group, shape))
    except BaseException:
        _quietly(group.remove)
        raise
    return _Spare(slot, sock, group, time.monotonic())


_POOL = _SparePool()


def _prepared(group: cgroups.TaskCgroup, shape: _Shape) -> Prepared:
    return Prepared(cgroup_procs=[str(p) for p in group.procs_files], namespaces=list(shape.namespaces),
                           rootfs=shape.rootfs, shm_size_bytes=shape.shm_size_bytes,
                           host_network=shape.host_network, pivot_early=shape.pivot_early)


def _open_tree_works() -> bool:
    """Whether this kernel has open_tree(2)/move_mount(2) (5.2+): then spares pivot before their task."""
    if not _OPEN_TREE:
        fd = linux.open_tree("/")
        if fd is not None:
            os.close(fd)
        _OPEN_TREE.append(fd is not None)
    return _OPEN_TREE[0]


_OPEN_TREE: list[bool] = []


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
        return IsolationLevel.CONTAINER

    def capabilities(self) -> ExecutorCapabilities:
        return ExecutorCapabilities(
            isolation_level=IsolationLevel.CONTAINER, supports_cpu_limit=True, supports_memory_limit=True,
            supports_disk_limit=True, supports_pids_limit=True,
            network_policies=frozenset({NetworkMode.NONE, NetworkMode.LOCALHOST, NetworkMode.FULL}),
            supports_readonly_rootfs=True,
            seccomp_profiles=frozenset({"RuntimeDefault", "expbuild-default", "expbuild-strict", "Unconfined"}),
            uses_image=False)

    async def health_check(self) -> None:
        if self._problem:
            raise ExecutorUnavailable(self._problem)
        await asyncio.to_thread(_Zygote.ensure)

    async def warmup(self) -> None:
        await self.health_check()
        if SPARES_PER_SHAPE > 0:
            try:
                await asyncio.to_thread(_POOL.fill, self._shape(NetworkMode.NONE))
            except (cgroups.CgroupError, OSError):
                pass   # no spares: each task makes its own cgroup and launcher, and reports what fails

    def sweep(self) -> None:
        """Remove what a crashed worker left: cgroups (killing their processes) and disk tmpfs mounts."""
        cgroups.sweep(self.cgroup_parent)
        with contextlib.suppress(OSError):
            for entry in DISK_ROOT.iterdir():
                if not cgroups._owner_alive(entry.name):  # noqa: SLF001 - same naming rule as the cgroups
                    _remove_disk(entry)

    async def execute(self, request: ExecutionRequest) -> ExecutionResult:
        if self._problem:
            raise ExecutorUnavailable(self._problem)
        if request.limits.network.mode == NetworkMode.RESTRICTED:
            raise ExecutorUnavailable("namespace executor cannot enforce network policy Restricted")
        profile = seccomp.resolve_profile_name(request.seccomp_profile)
        limits = request.limits.merged_over(self._defaults)
        started = time.monotonic()
        unique = f"-{next(_sequence)}"
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
                disk = await asyncio.to_thread(_make_disk, f"{unique[1:]}.{os.getpid()}", request, limits.disk_bytes)
                workspace = disk / "ws"
            elif request.run_as_user is not None:
                await asyncio.to_thread(_chown_tree, workspace, request.run_as_user)
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
                await asyncio.to_thread(_copy_back_and_remove, disk, request.workspace)
        nsinit.trace("x.done", spare.slot)
        if SPARES_PER_SHAPE > 0:
            _POOL.want(shape)   # replaced now that this task is done, not while it starts
        files, problems = collect_outputs(request.workspace, request.output_paths)
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
        try:
            import pyseccomp  # noqa: F401
        except (ImportError, OSError) as exc:
            return f"needs libseccomp (pyseccomp): {exc}"
        if self.config.rootfs != "host" and not Path(self.config.rootfs, "bin").exists():
            return f"rootfs {self.config.rootfs!r} has no bin/; set rootfs to \"host\" or a root filesystem directory"
        return None

    def _namespaces(self) -> list[str]:
        return [name for name, on in (("pid", self.config.use_pid_namespace),
                                      ("mount", self.config.use_mount_namespace),
                                      ("net", self.config.use_network_namespace),
                                      ("uts", self.config.use_uts_namespace),
                                      ("ipc", self.config.use_ipc_namespace)) if on]

    def _shape(self, network: NetworkMode) -> _Shape:
        namespaces = tuple(effective_namespaces(self._namespaces(), _NETWORK[network]))
        return _Shape(self.cgroup_parent, namespaces, self.config.rootfs, self.config.tmp_size_bytes,
                      host_network=network == NetworkMode.FULL,
                      pivot_early="mount" in namespaces and _open_tree_works())

    def _claim(self, task_id: str, unique: str, limits, shape: _Shape) -> _Spare:  # type: ignore[no-untyped-def]
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
            return self._spare_in(group, shape)
        except BaseException:
            _quietly(group.remove)
            raise

    def _take(self, limits, shape: _Shape) -> _Spare | None:  # type: ignore[no-untyped-def]
        spare = _POOL.take(shape) if SPARES_PER_SHAPE > 0 else None
        if spare is None:
            return None
        try:
            self._limit(spare.group, limits)
        except cgroups.CgroupError:
            _POOL._drop(spare)  # noqa: SLF001
            return None
        spare.pooled = True   # renamed to the task's name once it runs (off its start path)
        return spare

    @staticmethod
    def _limit(group: cgroups.TaskCgroup, limits) -> None:  # type: ignore[no-untyped-def]
        group.set_limits(memory_bytes=limits.memory_bytes, max_processes=limits.max_processes,
                         cpu_cores=limits.cpu_cores)

    @staticmethod
    def _spare_in(group: cgroups.TaskCgroup, shape: _Shape) -> _Spare:
        slot, sock = _Zygote.prepare(_prepared(group, shape))
        return _Spare(slot, sock, group, time.monotonic())

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
            namespaces=namespaces)

    async def _run(self, spec: LaunchSpec, request: ExecutionRequest, outcome: dict, spare: _Spare,
                   shape: _Shape, name: tuple[str, str]) -> None:
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
                retry = await asyncio.to_thread(self._spare_in, spare.group, shape)
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
            code, reason, message = 127, TerminationReason.START_FAILED, errors[0].split("-error: ", 1)[1]
        elif ends:
            kind, number = ends[-1].split()
            code = int(number) if kind == "exit" else 128 + int(number)
            reason = TerminationReason.COMPLETED if code == 0 else TerminationReason.NON_ZERO_EXIT
            if code != 0 and stats.pids_limit_hit:
                reason, message = TerminationReason.PIDS_LIMIT, "a fork was refused at the pids limit"
        else:
            code, reason, message = 137, TerminationReason.NON_ZERO_EXIT, "the launcher was killed"
        return ExecutionResult(
            exit_code=code, reason=reason, executor=self.name, isolation_level=IsolationLevel.CONTAINER,
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
    """Read a pipe to EOF, keeping the first ``limit`` bytes (and draining the rest so the writer never
    blocks); the future's result is (bytes, truncated). A bare reader callback, not a transport: the
    task's end is one wakeup away from the executor."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()
    kept = bytearray()
    state = {"truncated": False}
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
            room = limit - len(kept)
            if len(chunk) > room:
                state["truncated"] = True
            kept.extend(chunk[:max(room, 0)])
            return
        done()
        if not future.done():
            future.set_result((bytes(kept), state["truncated"]))

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
    _quietly(group.remove)
    return stats


def _quietly(func) -> None:  # type: ignore[no-untyped-def]
    with contextlib.suppress(cgroups.CgroupError, OSError):
        func()


def _chown_tree(root: Path, uid: int) -> None:
    os.lchown(root, uid, uid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)


def _make_disk(name: str, request: ExecutionRequest, size: int) -> Path:
    """A host tmpfs of ``size`` bytes holding a copy of the workspace (ws/) and the task's /tmp (tmp/)."""
    disk = DISK_ROOT / name
    disk.mkdir(parents=True)
    linux.mount("tmpfs", str(disk), "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, f"size={size},mode=0755")
    try:
        shutil.copytree(request.workspace, disk / "ws", symlinks=True, dirs_exist_ok=True)
        (disk / "tmp").mkdir(mode=0o1777)
        os.chmod(disk / "tmp", 0o1777)
        if request.run_as_user is not None:
            _chown_tree(disk / "ws", request.run_as_user)
    except BaseException:
        _remove_disk(disk)
        raise
    return disk


def _copy_back_and_remove(disk: Path, workspace: Path) -> None:
    """Copy what the task left (regular files, dirs, symlinks as links; never fifos or devices), then unmount."""
    try:
        def special(directory: str, names: list[str]) -> set[str]:
            return {n for n in names if not stat.S_ISREG(m := os.lstat(os.path.join(directory, n)).st_mode)
                    and not stat.S_ISDIR(m) and not stat.S_ISLNK(m)}
        shutil.copytree(disk / "ws", workspace, symlinks=True, dirs_exist_ok=True, ignore=special)
    finally:
        _remove_disk(disk)


def _remove_disk(disk: Path) -> None:
    with contextlib.suppress(OSError):
        linux.umount(str(disk))
    with contextlib.suppress(OSError):
        disk.rmdir()
