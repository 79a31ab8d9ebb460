"""Whether a process started by this worker can join a task cgroup at all: asked once, before any task.

The namespace executor's launcher writes itself into the task's ``cgroup.procs``. In a container's or a
Kubernetes pod's own cgroup namespace, with cgroup2 mounted ``nsdelegate`` (as systemd mounts it), the kernel
refuses to move a process into a cgroup outside that namespace -- such as ``/sys/fs/cgroup/expbuild/...``
on the host's hierarchy -- so every task would fail at its start. Found here, the executor is unavailable
with the reason, and executor selection moves on.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from ..cgroups import CGROUP_ROOT, CgroupError, TaskCgroup

_INIT_CGROUP_NS = 0xEFFFFFFB   # the initial cgroup namespace's inode number (PROC_CGROUP_INIT_INO, linux/proc_ns.h)


def join_problem(parent: str, *, root: Path = CGROUP_ROOT) -> str | None:
    """Why a process started from here could not join a task cgroup under ``parent``; None when it can.
    Tried for real: a shell joins a fresh cgroup (named like a task's, so the sweep finds it if we die)."""
    try:
        group = TaskCgroup.create("join-check", parent=parent, root=root)
    except CgroupError as exc:
        return str(exc)
    try:
        joined = subprocess.run(["/bin/sh", "-c", 'for p; do echo 0 > "$p" || exit 1; done', "join-check",
                                 *map(str, group.procs_files)], capture_output=True, text=True, timeout=30)
    finally:
        with contextlib.suppress(CgroupError, OSError):
            group.remove()
    if joined.returncode == 0:
        return None
    why = f"a process cannot join a cgroup under {root / parent} ({joined.stderr.strip() or joined.returncode})"
    if group.version == 2 and os.stat("/proc/self/ns/cgroup").st_ino != _INIT_CGROUP_NS:
        why += ("; this process is in a cgroup namespace of its own (a container's or a pod's), and cgroup2 "
                "mounted with nsdelegate refuses to move a process into a cgroup outside it")
    return why
