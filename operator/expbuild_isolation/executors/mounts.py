"""The mounts an executor leaves on host paths for a task's life, and taking them down.

The namespace executor's disk limit (``namespace/disk_limit.py``) turns a task's workspace into a tmpfs
of that size; whoever deletes the workspace (``workspace.remove_workspace``, shared by every backend and the
REAPI worker) must unmount it first. Every such tmpfs names its worker in its mount source
(``expbuild-disk.<pid>``), which is how they are found here and swept after a crashed worker.
"""

from __future__ import annotations

import os
from pathlib import Path

from .linux import umount

DISK_SOURCE = "expbuild-disk"     # the mount source of every disk tmpfs: "expbuild-disk.<worker pid>"
UMOUNT_NOFOLLOW, MNT_DETACH = 8, 2


def unmount_workspace(workspace: Path) -> None:
    """Take every disk tmpfs off ``workspace`` (before it is deleted); other mounts there are left alone."""
    target = os.path.realpath(workspace)
    while any(point == target for point, _ in disk_mounts()):
        umount(target, MNT_DETACH | UMOUNT_NOFOLLOW)


def disk_mounts() -> list[tuple[str, str]]:
    """(mount point, owner pid) of every disk tmpfs in this mount namespace, from /proc/self/mountinfo."""
    found: list[tuple[str, str]] = []
    try:
        handle = open("/proc/self/mountinfo")
    except FileNotFoundError:   # not Linux: nothing can be mounted by us
        return found
    with handle:
        for line in handle:
            fields, _, after = line.partition(" - ")
            kind = after.split()
            if len(kind) >= 2 and kind[0] == "tmpfs" and kind[1].startswith(f"{DISK_SOURCE}."):
                point = fields.split()[4]
                found.append((_unescape(point), kind[1].rsplit(".", 1)[-1]))
    return found


def _unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return path.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape") \
        if "\\" in path else path
