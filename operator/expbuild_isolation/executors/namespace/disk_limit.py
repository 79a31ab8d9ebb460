"""The namespace executor's disk limit: the workspace itself moves onto a host tmpfs of that size.

Before the task runs, its inputs are copied into a fresh tmpfs (``ws/``, beside ``tmp/``, the task's /tmp:
the two share the limit; tmpfs pages also count against the memory limit) and ``ws/`` is bind-mounted over
the workspace directory. From then on the workspace IS the size-limited tmpfs: the task writes there, and
whoever reads the workspace afterwards (``collect_outputs``, the REAPI worker's upload) reads the task's
files where they are. Nothing is copied back: a copy back, done as root into the original directory, wrote
through the workspace's symlinks (a host file overwritten, a root-owned setuid file planted) and turned a
sparse file into real blocks past the limit.

The workspace stays a mount until ``remove_workspace`` takes it down (``mounts.unmount_workspace``). Every such
tmpfs names its worker in its mount source (``expbuild-disk.<pid>``): ``sweep_disks`` unmounts what a
crashed worker left, wherever it was mounted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from .. import cgroups
from ..base import ExecutionRequest, ExecutorError
from ..linux import MS_BIND, MS_NODEV, MS_NOSUID, mount, umount
from ..mounts import DISK_SOURCE, MNT_DETACH, UMOUNT_NOFOLLOW, disk_mounts
from ..workspace import chown_tree
from .sandbox_root import LAUNCH_ROOT

DISK_ROOT = Path(LAUNCH_ROOT) / "disk"


def make_disk(name: str, request: ExecutionRequest, size: int) -> Path:
    """A host tmpfs of ``size`` bytes holding the workspace (ws/, then bound over the workspace) and the
    task's /tmp (tmp/)."""
    disk = DISK_ROOT / name
    disk.mkdir(parents=True)
    mount(f"{DISK_SOURCE}.{os.getpid()}", str(disk), "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=0755")
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


def release_disk(disk: Path) -> None:
    """After the task: empty its /tmp (nobody reads it; it holds memory) and drop the tmpfs's own mount
    point. The workspace keeps the tmpfs until it is removed."""
    try:
        shutil.rmtree(disk / "tmp", ignore_errors=True)   # fd-based: never follows the task's links
    finally:
        _remove_disk(disk)


def sweep_disks() -> None:
    """Unmount the disks of workers that are gone, wherever they are mounted (same owner rule as cgroups)."""
    for point, owner in sorted(disk_mounts(), key=lambda m: len(m[0]), reverse=True):
        if not cgroups.pid_alive(owner):
            with contextlib.suppress(OSError):
                umount(point, MNT_DETACH | UMOUNT_NOFOLLOW)
    with contextlib.suppress(OSError):
        for entry in DISK_ROOT.iterdir():
            if not cgroups.pid_alive(entry.name.rsplit(".", 1)[-1]):
                _remove_disk(entry)


def _remove_disk(disk: Path) -> None:
    with contextlib.suppress(OSError):
        umount(str(disk))
    with contextlib.suppress(OSError):
        disk.rmdir()
