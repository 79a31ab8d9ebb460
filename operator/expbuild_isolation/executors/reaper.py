"""The host executor's middle process: a child subreaper that owns one task's whole process tree.

Run as ``python -I -S reaper.py`` with a JSON job on stdin. It marks itself a
child subreaper (PR_SET_CHILD_SUBREAPER), so a grandchild that double-forks and
calls setsid is reparented to it instead of to init and cannot slip away. It
starts the command in a new session, enforces the timeout, and when the command
ends (or time runs out) kills every process still below it. Its last act is one
JSON line on the pipe named by ``report_fd``: exit code, whether the deadline hit, and the rusage of all
reaped descendants (or ``error`` when the job itself is unusable, before anything ran).

It must not lose its children whatever happens: the job is checked before the fork, a wait never asks the
kernel for more than an hour (a huge timeout overflowed ``sigtimedwait``), every catchable signal is taken
synchronously, and any error of its own kills the whole tree before it exits. What it cannot survive is
SIGKILL, which a task running as the same user can send it (the host executor's isolation is Process).

Standard library only, and no imports of this package: it must start fast.
"""

import ctypes
import json
import os
import resource
import signal
import sys
import time
import warnings  # noqa: F401 - os.execvpe imports it lazily, after the child may have become a user who
#                                cannot read this interpreter's library (a pyenv under /root is 0700)

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
MAX_WAIT_SECONDS = 3600.0
# Signals whose default action is not to end a process: taken and ignored (SIGCHLD is the child's news).
IGNORED = {signal.SIGWINCH, signal.SIGURG, signal.SIGCONT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}
WATCHED = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}


def _prctl(option, value):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl failed")


def _descendants(root):
    """Pids below ``root`` right now, from /proc (children first found, then theirs)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        ppid = int(data[data.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        for pid in children.get(stack.pop(), ()):
            found.append(pid)
            stack.append(pid)
    return found


def _kill_tree(me):
    """SIGKILL everything below us until nothing is left, reaping as we go; returns what was reaped."""
    reaped = {}
    for _ in range(1000):
        pids = _descendants(me)
        if not pids:
            reaped.update(_reap(block=False))
            return reaped
        for pid in pids:
            try:
                os.kill(pid, signal.SIGSTOP)  # stop first so a fork loop cannot outrun us
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reaped.update(_reap(block=False))
        time.sleep(0.002)
    return reaped


def _reap(block):
    statuses = {}
    while True:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return statuses
        if pid == 0:
            return statuses
        statuses[pid] = status
        if block:
            return statuses


def _child(job):
    os.close(job["report_fd"])
    os.setsid()
    for name in ("SIGPIPE", "SIGXFSZ"):   # Python ignores these; an ignored signal stays ignored across exec
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    for name, (soft, hard) in job.get("rlimits", {}).items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    # Enter the working directory while still ourselves: the workspace's parents may not be searchable by
    # the task's user (a 0700 work_dir), and a process keeps its cwd whatever it becomes.
    os.chdir(job["cwd"])
    user = job.get("user")
    if user is not None:  # started as root: the task never is (groups first, uid last: no way back)
        os.setgroups([])
        os.setgid(user)
        os.setuid(user)
    os.umask(0o022)
    try:
        os.execvpe(job["argv"][0], job["argv"], job["env"])
    except OSError as exc:
        os.write(2, f"cannot start {job['argv'][0]!r}: {exc.strerror}\n".encode())
        os._exit(127)


def timeout_seconds(value):
    """The job's timeout as a float: positive, infinity meaning none; anything else is refused."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"timeout must be a number of seconds, got {str(value)[:40]!r}") from None
    if not seconds > 0:   # also NaN
        raise ValueError(f"timeout must be a positive number of seconds, got {seconds!r}")
    return seconds


def supervise(child, timeout):
    """Wait for ``child`` until it exits, the deadline passes or a signal stops us: (status, why)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None, "deadline"
        # One wait at most MAX_WAIT_SECONDS: Python cannot convert a timeout of 10**15 s (OverflowError).
        info = signal.sigtimedwait(WATCHED, min(remaining, MAX_WAIT_SECONDS))
        if info is None or info.si_signo in IGNORED:
            continue
        if info.si_signo != signal.SIGCHLD:
            return None, "cancelled" if info.si_signo in (signal.SIGTERM, signal.SIGINT) else \
                f"signal {signal.strsignal(info.si_signo) or info.si_signo} ({_signal_name(info.si_signo)})"
        status = _reap(block=False).get(child)
        if status is not None:
            return status, None


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:   # a real-time signal between SIGRTMIN and SIGRTMAX
        return f"SIGRTMIN+{number - signal.SIGRTMIN}"


def _exit_code(status, why):
    if why == "deadline":
        return 124
    if status is None:
        return 137
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 128 + os.WTERMSIG(status)


def _kill_everything(child):
    """Kill the whole tree; if walking /proc fails, at least the child's session. Returns what was reaped."""
    try:
        return _kill_tree(os.getpid())
    except BaseException:  # noqa: BLE001 - a last resort must not raise
        try:
            os.killpg(child, signal.SIGKILL)
        except OSError:
            pass
        return _reap(block=False)


def main():
    job = json.loads(sys.stdin.read())
    os.close(0)
    os.open(os.devnull, os.O_RDONLY)
    report = os.fdopen(job["report_fd"], "w")
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # our parent died: take the task down with us
    # Every signal is taken with sigtimedwait, never as a handler or its default action: one that would
    # end us (a task can SIGHUP or SIGUSR1 its reaper) first ends the whole tree.
    signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    try:
        timeout = timeout_seconds(job.get("timeout"))   # checked before any process of the task exists
    except ValueError as exc:
        json.dump({"error": str(exc)}, report)
        report.close()
        return
    child = os.fork()
    if child == 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())  # the mask survives exec: clear it
        _child(job)
    error = None
    try:
        status, why = supervise(child, timeout)
    except BaseException as exc:  # noqa: BLE001 - whatever went wrong here, the task's processes go first
        status, why, error = None, "error", f"{type(exc).__name__}: {exc}"
    reaped = _kill_everything(child)
    if status is None:
        status = reaped.get(child)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    outcome = {"exit_code": _exit_code(status, why), "stopped": why,
               "cpu_time_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_bytes": usage.ru_maxrss * 1024,
               "read_blocks": usage.ru_inblock, "write_blocks": usage.ru_oublock}
    if error:
        outcome["error"] = error
    json.dump(outcome, report)
    report.close()


if __name__ == "__main__":
    main()
