"""The launcher of the namespace executor: a single-threaded zygote that keeps spare sandboxes.

Why a zygote: starting a Python interpreter per task costs 20-40 ms, and forking
the worker itself is unsafe (it is an asyncio process with threads). The worker
starts this module once (``python -m expbuild_isolation.executors.nsinit FD``).

Why spares: most of a sandbox does not depend on its task, and the slowest
parts are kernel work -- joining a cgroup v1 hierarchy waits for an RCU grace
period (1-15 ms, more under load), creating namespaces, forking a Python
process, ~30 mounts, pivot_root. The worker asks for a spare per "shape"
(namespaces, rootfs, host network) ahead of time by sending ``Prepared`` with
the spare's end of a socket and the task cgroup's ``cgroup.procs`` files opened
for writing. The zygote forks:

    zygote ── fork ──> waiter: setsid, unshare(namespaces), fork, then waits
                        └──> pid 1 of the new PID namespace: joins the task
                             cgroup, private mounts, a fresh root (read-only
                             host binds, /proc, /dev, /etc), pivot_root,
                             hostname, oom score, bounding set dropped --
                             then blocks on the socket.

The worker sets the cgroup's limits and sends the task's ``LaunchSpec`` with
its stdout, stderr and status pipes (and the workspace and disk /tmp as
open_tree() fds: the spare's mount table predates them) straight to pid 1,
which attaches them, remounts / read-only, brings up lo if asked, drops to the
task's uid with no capabilities, sets no_new_privs, loads the precompiled
seccomp filter and execs. No task code runs before all of that.

The waiter (outside the task cgroup) writes ``exit N`` or ``signal N`` to the
status pipe when pid 1 ends (the kernel then kills everything left in the PID
namespace). Setup failures -- including a spare's, found when its task comes --
are written as ``setup-error: ...`` / ``exec-error: ...`` by pid 1 itself;
every pipe is close-on-exec, so the task holds only its stdio.

This module imports nothing heavy: it runs in every forked child.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import json
import os
import platform
import signal
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field

from . import seccomp

LAUNCH_ROOT = "/run/expbuild-isolation"
ROOT_MOUNTPOINT = f"{LAUNCH_ROOT}/root"   # every task mounts its root here, each in its own mount namespace
HOST_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_BINDS = ("nsswitch.conf", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime",
             "host.conf", "gai.conf")
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
NAMESPACE_FLAGS = {"pid": CLONE_NEWPID, "mount": CLONE_NEWNS, "uts": CLONE_NEWUTS, "ipc": CLONE_NEWIPC,
                   "net": CLONE_NEWNET}
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
SYS_CAPSET = {"x86_64": 126, "aarch64": 91}
SYS_OPEN_TREE, SYS_MOVE_MOUNT = 428, 429   # one number on every architecture (the unified table, 5.2+)
AT_FDCWD, AT_RECURSIVE, OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = -100, 0x8000, 1, os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4

_libc = ctypes.CDLL(None, use_errno=True)
_TRACE_FD = -1   # EXPBUILD_NSINIT_TRACE=<file>: every process appends "<slot> <stage> <monotonic ns>" lines


def open_trace() -> None:
    global _TRACE_FD
    if _TRACE_FD < 0 and os.environ.get("EXPBUILD_NSINIT_TRACE"):
        _TRACE_FD = os.open(os.environ["EXPBUILD_NSINIT_TRACE"],
                            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def trace(stage: str, slot: int = -1) -> None:
    if _TRACE_FD >= 0:
        os.write(_TRACE_FD, f"{slot} {stage} {time.perf_counter_ns()}\n".encode())
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


@dataclass
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: str                                # inside the new root
    workspace: str                          # host directory bound at /workspace
    cgroup_procs: list[str] = field(default_factory=list)
    rootfs: str = "host"
    tmp_source: str | None = None           # host directory bound at /tmp (disk-limited tasks) ...
    tmp_size_bytes: int = 64 << 20          # ... else a tmpfs of this size
    network: str = "none"                   # none | localhost | full
    hostname: str = "expbuild"
    uid: int | None = 65534
    gid: int | None = 65534
    seccomp_profile: str | None = "expbuild-default"
    read_only_root: bool = True
    namespaces: list[str] = field(default_factory=lambda: ["pid", "mount", "net", "uts", "ipc"])
    trees: list[str] = field(default_factory=list)   # "workspace"/"tmp": sent as open_tree() fds after the pipes

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def _bind(source: str, target: str, *, readonly: bool, extra: int = MS_NOSUID | MS_NODEV) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_BIND | MS_REMOUNT | extra | (MS_RDONLY if readonly else 0))


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def _bind_file(source: str, target: str) -> None:
    if os.path.isdir(source) and not os.path.islink(source):
        os.mkdir(target)
    elif os.path.exists(source):
        _touch(target)
    else:
        return
    _bind(source, target, readonly=True)


def _host_root(root: str) -> None:
    """A fresh tmpfs root holding read-only binds of the host's programs and a minimal /etc."""
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path in HOST_DIRS:
        target = root + path
        if os.path.islink(path):
            os.symlink(os.readlink(path), target)
        elif os.path.isdir(path):
            os.mkdir(target)
            _bind(path, target, readonly=True)
    os.mkdir(f"{root}/etc")
    for name in ETC_BINDS:
        _bind_file(f"/etc/{name}", f"{root}/etc/{name}")


def _etc_key(spec: LaunchSpec) -> tuple:
    return spec.uid, spec.gid, spec.hostname, spec.network == "full"


def _default_spec(host_network: bool) -> LaunchSpec:
    return LaunchSpec(argv=[], env={}, cwd="/", workspace="/", network="full" if host_network else "none")


def _host_resolver(root: str) -> None:
    """Full networking: the host's resolver configuration."""
    for name in ("resolv.conf", "hosts"):
        _bind_file(f"/etc/{name}", f"{root}/etc/{name}")


def _host_etc(root: str, spec: LaunchSpec) -> None:
    """The files of /etc that depend on the task: users, groups, hosts, hostname.

    A spare writes them for the default task (uid 65534, hostname expbuild) ahead of time.
    """
    uid = spec.uid if spec.uid is not None else 0
    gid = spec.gid if spec.gid is not None else 0
    users = {0: "root", 65534: "nobody", uid: "expbuild" if uid not in (0, 65534) else ("root", "nobody")[uid != 0]}
    _write(f"{root}/etc/passwd", "".join(f"{n}:x:{u}:{u if u != 65534 else 65534}:{n}:/workspace:/bin/sh\n"
                                         for u, n in sorted(users.items())))
    groups = {0: "root", 65534: "nogroup", gid: "expbuild" if gid not in (0, 65534) else ("root", "nogroup")[gid != 0]}
    _write(f"{root}/etc/group", "".join(f"{n}:x:{g}:\n" for g, n in sorted(groups.items())))
    if spec.network != "full":
        _write(f"{root}/etc/hosts", f"127.0.0.1 localhost {spec.hostname}\n::1 localhost\n")
    _write(f"{root}/etc/hostname", spec.hostname + "\n")


def _populate(root: str, shm_size: int) -> None:
    """What every task's root has: mount points, /proc (masked), a minimal read-only /dev."""
    for name in ("workspace", "proc", "dev", "tmp"):
        os.makedirs(f"{root}/{name}", exist_ok=True)
    mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for masked in ("sys", "sysrq-trigger", "irq", "bus"):
        if os.path.exists(f"{root}/proc/{masked}"):
            _bind(f"{root}/proc/{masked}", f"{root}/proc/{masked}", readonly=True, extra=MS_NOSUID | MS_NODEV | MS_NOEXEC)
    dev = f"{root}/dev"
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    for node in DEV_NODES:
        if os.path.exists(f"/dev/{node}"):
            _touch(f"{dev}/{node}")
            _bind(f"/dev/{node}", f"{dev}/{node}", readonly=False, extra=MS_NOSUID | MS_NOEXEC)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    os.mkdir(f"{dev}/shm")
    mount("tmpfs", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={shm_size},mode=1777")
    mount(None, dev, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NOEXEC | MS_RDONLY)


def open_tree(path: str) -> int | None:
    """A detached copy of the mount tree at ``path`` (open_tree(2), Linux 5.2+), or None where unsupported.

    A spare's mount namespace was copied before its task existed and no longer sees host mounts made
    since (a disk-limited task's tmpfs, say): the worker opens the task's directories as detached trees
    in its own namespace and the spare attaches them with move_mount(2).
    """
    fd = _libc.syscall(SYS_OPEN_TREE, AT_FDCWD, path.encode(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)
    return fd if fd >= 0 else None


def _attach(tree: int | None, source: str, target: str, *, extra: int = MS_NOSUID | MS_NODEV) -> None:
    if tree is None:
        mount(source, target, None, MS_BIND | MS_REC)
    else:
        _check(_libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH),
               f"move_mount {source} to {target}")
        os.close(tree)
    mount(None, target, None, MS_BIND | MS_REMOUNT | extra)


def _task_mounts(root: str, spec: LaunchSpec, trees: dict[str, int]) -> None:
    """The task's own directories: the workspace and /tmp."""
    _attach(trees.get("workspace"), spec.workspace, f"{root}/workspace")
    if spec.tmp_source:
        _attach(trees.get("tmp"), spec.tmp_source, f"{root}/tmp", extra=MS_NOSUID | MS_NODEV | MS_NOEXEC)
    else:
        mount("tmpfs", f"{root}/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              f"size={spec.tmp_size_bytes},mode=1777")


def _pivot(root: str) -> None:
    os.chdir(root)
    _check(_libc.syscall(SYS_PIVOT_ROOT[platform.machine()], b".", b"."), "pivot_root")
    umount(".")   # the old root, stacked under the new one by pivot_root(".", ".")
    os.chdir("/")


def _loopback_up() -> None:
    import fcntl
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = struct.pack("16sH14s", b"lo", 0x1 | 0x8 | 0x40, b"")   # IFF_UP | IFF_LOOPBACK | IFF_RUNNING
        fcntl.ioctl(sock, 0x8914, ifreq)                                 # SIOCSIFFLAGS


_LAST_CAP: list[int] = []


def _last_cap() -> int:
    if not _LAST_CAP:
        with open("/proc/sys/kernel/cap_last_cap") as handle:
            _LAST_CAP.append(int(handle.read()))
    return _LAST_CAP[0]


def _drop_bounding_set() -> None:
    """No capability can come back through exec (what we hold now stays usable until _drop_privileges).

    A spare does this before its task is known; a failure is reported to that task."""
    for cap in range(_last_cap() + 1):
        _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"prctl(CAPBSET_DROP, {cap})")
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(CAP_AMBIENT_CLEAR_ALL)")


def _drop_privileges(spec: LaunchSpec) -> None:
    """Everything else: no groups, the task's uid/gid, no capabilities at all, no_new_privs."""
    os.setgroups([])
    if spec.gid is not None:
        os.setresgid(spec.gid, spec.gid, spec.gid)
    if spec.uid is not None:
        os.setresuid(spec.uid, spec.uid, spec.uid)
    header = struct.pack("II", 0x20080522, 0)        # _LINUX_CAPABILITY_VERSION_3, this thread
    data = ctypes.create_string_buffer(24)           # two zeroed __user_cap_data_struct: no caps at all
    _check(_libc.syscall(SYS_CAPSET[platform.machine()], ctypes.c_char_p(header), data), "capset")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def effective_namespaces(namespaces: list[str], network: str) -> list[str]:
    """The namespaces a task gets: Full networking shares the host's network namespace."""
    return [name for name in NAMESPACE_FLAGS if name in namespaces and not (name == "net" and network == "full")]


@dataclass
class Prepared:
    """What a spare builds before its task is known (the executor keeps spares per shape)."""

    cgroup_procs: list[str]      # for messages; the request carries them opened (a rename does not matter)
    namespaces: list[str]        # effective namespaces: the task's must be the same list
    rootfs: str = "host"
    shm_size_bytes: int = 64 << 20
    host_network: bool = False   # Full networking: the host's resolv.conf and hosts
    pivot_early: bool = False    # pivot before the task is known (its directories then come as open trees)


def _join_cgroup(prep: Prepared, cgroup_fds: list[int]) -> None:
    """Move this process into the task cgroup (writing 0 means "the writer": we are pid 1 of our own
    PID namespace). On cgroup v1 this waits for an RCU grace period -- milliseconds, tens of them on a
    loaded machine -- which a spare pays before its task arrives."""
    try:
        for procs, fd in zip(prep.cgroup_procs, cgroup_fds, strict=True):
            try:
                os.write(fd, b"0")
            except OSError as exc:
                raise OSError(exc.errno, f"cannot join cgroup {procs}: {exc.strerror}") from None
    finally:
        for fd in cgroup_fds:
            os.close(fd)


def _pid1(prep: Prepared, slot: int, tasks: socket.socket, to_waiter: socket.socket, priority: int,
          cgroup_fds: list[int]) -> None:
    """pid 1 of the new namespaces: joins the task cgroup, builds the root, waits for its task, finishes
    the sandbox and execs. Never returns.
    """
    trace("p.start", slot)
    problem: BaseException | None = None
    root = ROOT_MOUNTPOINT
    default = _default_spec(prep.host_network)
    try:
        _join_cgroup(prep, cgroup_fds)
        trace("p.cgroup", slot)
        if "mount" in prep.namespaces:
            mount(None, "/", None, MS_REC | MS_PRIVATE)
            if prep.rootfs == "host":
                _host_root(root)
                if prep.host_network:
                    _host_resolver(root)
                _host_etc(root, default)
            else:
                _bind(prep.rootfs, root, readonly=False)
            _populate(root, prep.shm_size_bytes)
            if prep.pivot_early:
                _pivot(root)
                root = ""
        if "uts" in prep.namespaces:
            socket.sethostname(default.hostname)
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write("500")   # the task, not its waiter, is what the OOM killer should pick
        _drop_bounding_set()
    except BaseException as exc:  # noqa: BLE001 - reported to the task that comes for this spare
        problem = exc
    trace("p.prepared", slot)
    try:
        message, fds, _, _ = socket.recv_fds(tasks, 1 << 20, 8)
    except OSError:
        os._exit(0)
    if not message or len(fds) < 3:
        os._exit(0)   # the worker discarded this spare (or died)
    status_fd = fds[2]
    for fd in fds:
        os.set_inheritable(fd, False)   # SCM_RIGHTS delivers inheritable fds: the task must not hold the status pipe
    trace("p.launch", slot)
    stage = "setup"
    try:
        os.setpriority(os.PRIO_PGRP, 0, priority)   # the task and its waiter (our group) at the worker's priority
        socket.send_fds(to_waiter, [b"s"], [status_fd])
        to_waiter.close()
        tasks.close()
        if problem is not None:
            raise problem
        spec = LaunchSpec(**json.loads(message))
        if (effective_namespaces(spec.namespaces, spec.network) != prep.namespaces or spec.rootfs != prep.rootfs
                or (spec.network == "full") != prep.host_network):
            raise RuntimeError("launcher: the task does not fit the spare it was sent to")
        if "mount" in prep.namespaces:
            if spec.rootfs == "host" and _etc_key(spec) != _etc_key(default):
                _host_etc(root, spec)
            trees = dict(zip(spec.trees, fds[3:]))
            if prep.pivot_early and ("workspace" not in trees or (spec.tmp_source and "tmp" not in trees)):
                raise RuntimeError("launcher: the task's directories did not come as open trees")
            _task_mounts(root, spec, trees)
            trace("p.mounts", slot)
            if not prep.pivot_early:
                _pivot(root)
            if spec.read_only_root:
                mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
            trace("p.pivot", slot)
        if "uts" in prep.namespaces and spec.hostname != default.hostname:
            socket.sethostname(spec.hostname)
        if spec.network == "localhost" and "net" in prep.namespaces:
            _loopback_up()
        os.chdir(spec.cwd)
        _drop_privileges(spec)
        trace("p.privs", slot)
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        _close_all_but(status_fd, _TRACE_FD)   # both are close-on-exec
        for signum in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        if spec.seccomp_profile:
            program = _FILTERS.get(spec.seccomp_profile)
            if program is None:
                program = seccomp.compile_filter(spec.seccomp_profile)
            seccomp.load_compiled(program)
        trace("p.seccomp", slot)
        stage = "exec"
        os.execvpe(spec.argv[0], spec.argv, spec.env)
    except BaseException as exc:  # noqa: BLE001 - anything here is reported, then we die
        with _suppress():
            os.write(status_fd, f"{stage}-error: {exc}\n".encode())
    os._exit(127)


def _close_all_but(*keep: int) -> None:
    low = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def _spare(prep: Prepared, slot: int, tasks: socket.socket, cgroup_fds: list[int]) -> None:
    """The zygote's child, made before its task is known: unshares and forks pid 1, which joins the task
    cgroup. Then it waits for pid 1 and reports how it ended on the task's status pipe. Never returns.

    The waiter itself stays out of the task cgroup: once pid 1 is reaped (and the kernel has killed the
    rest of its PID namespace) the cgroup is empty and can go, while the waiter still exits.
    """
    trace("s.start", slot)
    priority = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, min(priority + SPARE_NICE, 19))   # yield to running tasks
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        flags = 0
        for name in prep.namespaces:
            flags |= NAMESPACE_FLAGS[name]
        _check(_libc.unshare(flags), "unshare")
        from_pid1, to_waiter = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
    except BaseException as exc:  # noqa: BLE001 - told to the task that comes for this spare
        _fail_when_launched(tasks, f"setup-error: {exc}")
    if pid == 0:
        from_pid1.close()
        _pid1(prep, slot, tasks, to_waiter, priority, cgroup_fds)
    for fd in cgroup_fds:
        os.close(fd)
    tasks.close()
    to_waiter.close()
    status_fd = -1
    try:
        _, fds, _, _ = socket.recv_fds(from_pid1, 16, 1)
        status_fd = fds[0] if fds else -1
    except OSError:
        pass
    from_pid1.close()
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    trace("s.reaped", slot)
    if status_fd >= 0:
        line = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
        with _suppress():
            os.write(status_fd, f"{line}\n".encode())
        os.close(status_fd)   # the worker reads EOF now, not after this process has torn down its memory
    trace("s.exit", slot)
    os._exit(0)


def _fail_when_launched(tasks: socket.socket, line: str) -> None:
    with _suppress():
        _, fds, _, _ = socket.recv_fds(tasks, 1 << 20, 8)
        if len(fds) >= 3:
            os.write(fds[2], f"{line}\n".encode())
    os._exit(127)


# A spare builds its sandbox at a lower CPU priority than the tasks already running (its task and waiter
# get the worker's priority back when the task arrives).
SPARE_NICE = int(os.environ.get("EXPBUILD_NAMESPACE_SPARE_NICE", "10"))
_FILTERS: dict[str, bytes] = {}   # profile -> compiled BPF, built once in the zygote


def serve(control: socket.socket) -> None:
    """The zygote loop, until the worker closes the socket. One message (JSON, SOCK_SEQPACKET) per spare:
    ``{"op": "prepare", "slot": N, "prepared": {...}}`` carrying the spare's end of its task socket and
    the cgroup.procs files to join, opened for writing. The worker later sends the task's LaunchSpec
    with its stdout, stderr and status pipes straight down that socket; closing it discards the spare.
    """
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # spares are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.makedirs(ROOT_MOUNTPOINT, exist_ok=True)
    open_trace()
    _last_cap()
    import fcntl  # noqa: F401 - imported once here, not in every forked child
    for name in seccomp.PROFILES:
        with _suppress():
            _FILTERS[name] = seccomp.compile_filter(name)
    gc.collect()
    gc.freeze()    # forked children do not touch (and so copy) the zygote's objects for the collector
    gc.disable()
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 1 << 20, 16)
        except InterruptedError:
            continue
        if not message:
            return
        try:
            request = json.loads(message)
            if request["op"] != "prepare" or len(fds) < 1:
                raise RuntimeError(f"unknown request {request.get('op')!r}")
            slot = request["slot"]
            prep = Prepared(**request["prepared"])
            if os.fork() == 0:
                control.close()
                _spare(prep, slot, socket.socket(fileno=fds[0]), fds[1:])
        except BaseException as exc:  # noqa: BLE001 - the spare's task will find its socket closed
            with _suppress():
                os.write(2, f"nsinit: cannot prepare a spare: {exc}\n".encode())
        finally:
            for fd in fds:
                os.close(fd)


def main(argv: list[str]) -> int:
    control = socket.socket(fileno=int(argv[0]))
    serve(control)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
