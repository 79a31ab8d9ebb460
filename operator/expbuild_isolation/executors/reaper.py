"""The host executor's middle process: a child subreaper that owns one task's whole process tree.

Run as ``python -I -S reaper.py`` with a JSON job on stdin. It marks itself a
child subreaper (PR_SET_CHILD_SUBREAPER), so a grandchild that double-forks and
calls setsid is reparented to it instead of to init and cannot slip away. It
starts the command in a new session, enforces the timeout, and when the command
ends (or time runs out) kills every process still below it. Its last act is one
JSON line on the pipe named by ``report_fd``: exit code, whether the deadline hit, and the rusage of all
reaped descendants.

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


def main():
    job = json.loads(sys.stdin.read())
    os.close(0)
    os.open(os.devnull, os.O_RDONLY)
    report = os.fdopen(job["report_fd"], "w")
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # our parent died: take the task down with us
    watched = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)  # taken with sigtimedwait, never as handlers
    child = os.fork()
    if child == 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())  # the mask survives exec: clear it
        _child(job)
    deadline = time.monotonic() + float(job["timeout"])
    status, why = None, None
    while status is None and why is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            why = "deadline"
            break
        info = signal.sigtimedwait(watched, remaining)
        if info is None:
            continue
        if info.si_signo != signal.SIGCHLD:
            why = "cancelled"
            break
        for pid, raw in _reap(block=False).items():
            if pid == child:
                status = raw
    reaped = _kill_tree(os.getpid())
    if status is None:
        status = reaped.get(child)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if status is None:
        code = 124 if why == "deadline" else 137
    elif os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
    else:
        code = 128 + os.WTERMSIG(status)
    if why == "deadline":
        code = 124
    json.dump({"exit_code": code, "stopped": why,
               "cpu_time_seconds": usage.ru_utime + usage.ru_stime,
               "peak_rss_bytes": usage.ru_maxrss * 1024,
               "read_blocks": usage.ru_inblock, "write_blocks": usage.ru_oublock}, report)
    report.close()


if __name__ == "__main__":
    main()
