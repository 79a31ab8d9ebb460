"""The launcher of the namespace executor: a single-threaded zygote that keeps spare sandboxes.

Why a zygote: starting a Python interpreter per task costs 20-40 ms, and forking
the worker itself is unsafe (it is an asyncio process with threads). The worker
starts this module once (``python -m expbuild_isolation.executors.namespace.nsinit FD``).

Why spares: most of a sandbox does not depend on its task, and the slowest
parts are kernel work -- joining a cgroup v1 hierarchy waits for an RCU grace
period (1-15 ms, more under load), creating namespaces, forking a Python
process, ~30 mounts, pivot_root. The worker asks for a spare per "shape"
(namespaces, rootfs, host network) ahead of time by sending ``Prepared`` with
the spare's end of a socket and the task cgroup's ``cgroup.procs`` files opened
for writing. The zygote forks:

    zygote ── fork ──> waiter: setsid, unshare(namespaces), fork, then waits
                        └──> pid 1 of the new PID namespace: joins the task
                             cgroup and makes it the root of a new cgroup
                             namespace, private mounts, a fresh root (read-only
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

The steps live beside this loop: ``launch`` (the two messages), ``sandbox_root``
(the root and pivot_root), ``privileges`` (capabilities, uid, no_new_privs),
``linux`` (the system calls). None of them imports anything heavy: they run in
every forked child.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import struct
import sys
import time

from . import sandbox_root
from .. import seccomp
from .launch import LaunchSpec, Prepared, default_spec, effective_namespaces
from ..linux import CLONE_NEWCGROUP, NAMESPACE_FLAGS, PR_SET_PDEATHSIG, libc, unshare
from .privileges import drop_bounding_set, drop_privileges, last_cap

_TRACE_FD = -1   # EXPBUILD_NSINIT_TRACE=<file>: every process appends "<slot> <stage> <monotonic ns>" lines


def open_trace() -> None:
    global _TRACE_FD
    if _TRACE_FD < 0 and os.environ.get("EXPBUILD_NSINIT_TRACE"):
        _TRACE_FD = os.open(os.environ["EXPBUILD_NSINIT_TRACE"],
                            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def trace(stage: str, slot: int = -1) -> None:
    if _TRACE_FD >= 0:
        os.write(_TRACE_FD, f"{slot} {stage} {time.perf_counter_ns()}\n".encode())


def _loopback_up() -> None:
    import fcntl
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = struct.pack("16sH14s", b"lo", 0x1 | 0x8 | 0x40, b"")   # IFF_UP | IFF_LOOPBACK | IFF_RUNNING
        fcntl.ioctl(sock, 0x8914, ifreq)                                 # SIOCSIFFLAGS


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


def _pid1(prep: Prepared, slot: int, tasks: socket.socket, to_waiter: socket.socket, priority: int | None,
          cgroup_fds: list[int]) -> None:
    """pid 1 of the new namespaces: joins the task cgroup, builds the root, waits for its task, finishes
    the sandbox and execs. Never returns.
    """
    trace("p.start", slot)
    problem: BaseException | None = None
    root = sandbox_root.ROOT_MOUNTPOINT
    default = default_spec(prep.host_network)
    step = Step("join the task cgroup")
    try:
        _join_cgroup(prep, cgroup_fds)
        step("unshare(CLONE_NEWCGROUP)")
        unshare(CLONE_NEWCGROUP)   # the task cgroup is the root of what /proc/self/cgroup shows: no host path
        trace("p.cgroup", slot)
        if "mount" in prep.namespaces:
            step("build the sandbox root")
            root = sandbox_root.build(prep, default)
        if "uts" in prep.namespaces:
            step("sethostname")
            socket.sethostname(default.hostname)
        step("write /proc/self/oom_score_adj")
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write("500")   # the task, not its waiter, is what the OOM killer should pick
        step("drop the capability bounding set")
        drop_bounding_set()
    except BaseException as exc:  # noqa: BLE001 - reported to the task that comes for this spare
        problem = step.failed(exc)
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
    step = Step("setpriority(PRIO_PGRP)")
    try:
        if priority is not None:   # the task and its waiter (our group) at the worker's priority
            os.setpriority(os.PRIO_PGRP, 0, priority)
        step("read the task's launch spec")
        spec = LaunchSpec(**json.loads(message))
        step("hand the status pipe and the deadline to the waiter")
        socket.send_fds(to_waiter, [json.dumps({"deadline": spec.deadline_seconds}).encode()], [status_fd])
        to_waiter.close()
        tasks.close()
        if problem is not None:
            raise problem
        if (effective_namespaces(spec.namespaces, spec.network) != prep.namespaces or spec.rootfs != prep.rootfs
                or (spec.network == "full") != prep.host_network):
            raise RuntimeError("launcher: the task does not fit the spare it was sent to")
        if "mount" in prep.namespaces:
            if spec.rootfs == "host" and sandbox_root.etc_key(spec) != sandbox_root.etc_key(default):
                step("write the sandbox's /etc")
                sandbox_root.host_etc(root, spec)
            trees = dict(zip(spec.trees, fds[3:]))
            if prep.pivot_early and ("workspace" not in trees or (spec.tmp_source and "tmp" not in trees)):
                raise RuntimeError("launcher: the task's directories did not come as open trees")
            step("mount the workspace and /tmp")
            sandbox_root.task_mounts(root, spec, trees)
            trace("p.mounts", slot)
            if not prep.pivot_early:
                step(f"pivot_root({root})")
                sandbox_root.pivot(root)
            if spec.read_only_root:
                step("remount / read-only")
                sandbox_root.make_root_read_only()
            trace("p.pivot", slot)
        if "uts" in prep.namespaces and spec.hostname != default.hostname:
            step("sethostname")
            socket.sethostname(spec.hostname)
        if spec.network == "localhost" and "net" in prep.namespaces:
            step("bring up lo (SIOCSIFFLAGS; needs CAP_NET_ADMIN)")
            _loopback_up()
        step(f"chdir({spec.cwd})")
        os.chdir(spec.cwd)
        step("drop privileges (setresuid, capset, no_new_privs)")
        drop_privileges(spec)
        trace("p.privs", slot)
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        _close_all_but(status_fd, _TRACE_FD)   # both are close-on-exec
        for signum in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        if spec.seccomp_profile:
            step(f"load the seccomp filter {spec.seccomp_profile}")
            program = _FILTERS.get(spec.seccomp_profile)
            if program is None:
                program = seccomp.compile_filter(spec.seccomp_profile)
            seccomp.load_compiled(program)
        trace("p.seccomp", slot)
        stage = "exec"
        os.execvpe(spec.argv[0], spec.argv, spec.env)
    except BaseException as exc:  # noqa: BLE001 - anything here is reported, then we die
        text = str(exc) if stage == "exec" or isinstance(exc, StepFailed) else str(step.failed(exc))
        with _suppress():
            os.write(status_fd, f"{stage}-error: {text}\n".encode())
    os._exit(127)


class StepFailed(Exception):
    """A sandbox setup step failed; the message names the step, then what the kernel said."""


class Step:
    """The setup step under way, so a failure says which one (``pivot_root(/run/...): Operation not permitted``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, name: str) -> None:
        self.name = name

    def failed(self, exc: BaseException) -> StepFailed:
        if isinstance(exc, StepFailed):
            return exc
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror and not exc.filename else str(exc)
        if isinstance(exc, OSError) and exc.filename:
            detail = f"{exc.strerror}: {exc.filename}"
        return StepFailed(f"{self.name}: {detail or type(exc).__name__}")


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
    # The zygote ends with the worker (its control socket closes); the waiter dies with the zygote
    # (PDEATHSIG: the zygote is single-threaded), and pid 1 with the waiter, so no sandbox outlives a killed
    # worker. (PDEATHSIG is not inherited across fork: each sets its own.)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:
        os._exit(0)   # the zygote died before the line above
    priority = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        if may_lower_nice(priority):   # yield to running tasks, only where the task can get its priority back
            os.setpriority(os.PRIO_PROCESS, 0, min(priority + SPARE_NICE, 19))
        else:
            priority = None
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        flags = 0
        for name in prep.namespaces:
            flags |= NAMESPACE_FLAGS[name]
        unshare(flags)
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
        message, fds, _, _ = socket.recv_fds(from_pid1, 256, 1)
        status_fd = fds[0] if fds else -1
        _kill_at_deadline(pid, json.loads(message or b"{}").get("deadline"))
    except (OSError, ValueError):
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


def _kill_at_deadline(pid1: int, seconds: float | None) -> None:
    """The sandbox's own deadline: SIGKILL to pid 1 (the kernel then kills its whole PID namespace)."""
    if not seconds:
        return
    signal.signal(signal.SIGALRM, lambda *_: os.kill(pid1, signal.SIGKILL))
    signal.setitimer(signal.ITIMER_REAL, seconds)


def _fail_when_launched(tasks: socket.socket, line: str) -> None:
    with _suppress():
        _, fds, _, _ = socket.recv_fds(tasks, 1 << 20, 8)
        if len(fds) >= 3:
            os.write(fds[2], f"{line}\n".encode())
    os._exit(127)


# A spare builds its sandbox at a lower CPU priority than the tasks already running (its task and waiter
# get the worker's priority back when the task arrives).
SPARE_NICE = int(os.environ.get("EXPBUILD_NAMESPACE_SPARE_NICE", "10"))
CAP_SYS_NICE = 23


def may_lower_nice(priority: int) -> bool:
    """Whether this process may go back to nice ``priority`` after raising it: CAP_SYS_NICE, or an RLIMIT_NICE
    that allows it. Root in a container usually has neither (Docker and containerd drop CAP_SYS_NICE)."""
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    if soft == resource.RLIM_INFINITY or 20 - soft <= priority:
        return True
    with open("/proc/self/status") as handle:
        effective = next((int(line.split()[1], 16) for line in handle if line.startswith("CapEff:")), 0)
    return bool(effective >> CAP_SYS_NICE & 1)
_FILTERS: dict[str, bytes] = {}   # profile -> compiled BPF, built once in the zygote


def serve(control: socket.socket) -> None:
    """The zygote loop, until the worker closes the socket. One message (JSON, SOCK_SEQPACKET) per spare:
    ``{"op": "prepare", "slot": N, "prepared": {...}}`` carrying the spare's end of its task socket and
    the cgroup.procs files to join, opened for writing. The worker later sends the task's LaunchSpec
    with its stdout, stderr and status pipes straight down that socket; closing it discards the spare.
    """
    # No PDEATHSIG here: it fires when the *thread* that started us ends (the worker starts the zygote from
    # whichever thread needs it first). The zygote ends when the worker process does: the control socket then
    # reads EOF below; its waiters, and through them every sandbox, follow it (``_spare``).
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # spares are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.makedirs(sandbox_root.ROOT_MOUNTPOINT, exist_ok=True)
    open_trace()
    last_cap()
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
