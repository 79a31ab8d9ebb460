"""The namespace executor's disk limit: the workspace itself moves onto a host tmpfs of that size.

Before the task runs, its inputs are copied into a fresh tmpfs (``ws/``, beside ``tmp/``, the task's /tmp:
the two share the limit; tmpfs pages also count against the memory limit) and ``ws/`` is bind-mounted over
the workspace directory. From then on the workspace IS the size-limited tmpfs: the task writes there, and
whoever reads the workspace afterwards (``collect_outputs``, the REAPI worker's upload) reads the task's
files where they are. Nothing is copied back: a copy back, done as root into the original directory, wrote
through the workspace's symlinks (a host file overwritten, a root-owned setuid file planted) and turned a
sparse file into real blocks past the limit.

The workspace stays a mount until ``remove_workspace`` takes it down (``unmount_workspace``). Every such
tmpfs names its worker in its mount source (``expbuild-disk.<pid>``): ``sweep_disks`` unmounts what a
crashed worker left, wherever it was mounted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from . import cgroups
from .base import ExecutionRequest, ExecutorError
from .linux import MS_BIND, MS_NODEV, MS_NOSUID, mount, umount
from .sandbox_root import LAUNCH_ROOT

DISK_ROOT = Path(LAUNCH_ROOT) / "disk"
SOURCE = "expbuild-disk"     # the mount source of every disk tmpfs: "expbuild-disk.<worker pid>"
_UMOUNT_NOFOLLOW, _MNT_DETACH = 8, 2


def make_disk(name: str, request: ExecutionRequest, size: int) -> Path:
    """A host tmpfs of ``size`` bytes holding the workspace (ws/, then bound over the workspace) and the
    task's /tmp (tmp/)."""
    disk = DISK_ROOT / name
    disk.mkdir(parents=True)
    mount(f"{SOURCE}.{os.getpid()}", str(disk), "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=0755")
    try:
        # The workspace holds only the caller's inputs yet: copied as they are, links as links.
        _copy_inputs(request.workspace, disk / "ws", size)
        (disk / "tmp").mkdir(mode=0o1777)
        os.chmod(disk / "tmp", 0o1777)
        if request.run_as_user is not None:
            chown_tree(disk / "ws", request.run_as_user)
        mount(str(disk / "ws"), str(request.workspace), None, MS_BIND)   # keeps nosuid, nodev
    except BaseException:
        _remove_disk(disk)
        raise
    return disk


class DiskTooSmall(ExecutorError):
    """The task's inputs alone do not fit its disk limit; the message names spec.resources.disk."""


def _copy_inputs(workspace: Path, target: Path, size: int) -> None:
    try:
        shutil.copytree(workspace, target, symlinks=True, dirs_exist_ok=True)
    except (shutil.Error, OSError) as exc:
        if getattr(exc, "errno", None) != errno.ENOSPC and f"[Errno {errno.ENOSPC}]" not in str(exc):
            raise
        inputs = sum(os.lstat(os.path.join(d, n)).st_size for d, _, names in os.walk(workspace) for n in names)
        raise DiskTooSmall(f"spec.resources.disk: the task's inputs ({inputs} bytes) do not fit its disk limit "
                           f"of {size} bytes (the workspace and /tmp share it)") from None


def chown_tree(root: Path, uid: int) -> None:
    os.lchown(root, uid, uid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)


def release_disk(disk: Path) -> None:
    """After the task: empty its /tmp (nobody reads it; it holds memory) and drop the tmpfs's own mount
    point. The workspace keeps the tmpfs until it is removed."""
    try:
        shutil.rmtree(disk / "tmp", ignore_errors=True)   # fd-based: never follows the task's links
    finally:
        _remove_disk(disk)


def unmount_workspace(workspace: Path) -> None:
    """Take every disk tmpfs off ``workspace`` (before it is deleted); other mounts there are left alone."""
    target = os.path.realpath(workspace)
    while any(point == target for point, _ in _disk_mounts()):
        umount(target, _MNT_DETACH | _UMOUNT_NOFOLLOW)


def sweep_disks() -> None:
    """Unmount the disks of workers that are gone, wherever they are mounted (same owner rule as cgroups)."""
    for point, owner in sorted(_disk_mounts(), key=lambda m: len(m[0]), reverse=True):
        if not cgroups.pid_alive(owner):
            with contextlib.suppress(OSError):
                umount(point, _MNT_DETACH | _UMOUNT_NOFOLLOW)
    with contextlib.suppress(OSError):
        for entry in DISK_ROOT.iterdir():
            if not cgroups.pid_alive(entry.name.rsplit(".", 1)[-1]):
                _remove_disk(entry)


def _disk_mounts() -> list[tuple[str, str]]:
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
            if len(kind) >= 2 and kind[0] == "tmpfs" and kind[1].startswith(f"{SOURCE}."):
                point = fields.split()[4]
                found.append((_unescape(point), kind[1].rsplit(".", 1)[-1]))
    return found


def _unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return path.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape") \
        if "\\" in path else path


def _remove_disk(disk: Path) -> None:
    with contextlib.suppress(OSError):
        umount(str(disk))
    with contextlib.suppress(OSError):
        disk.rmdir()
