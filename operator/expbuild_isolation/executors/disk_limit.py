"""The namespace executor's disk limit: a host tmpfs of that size holding the task's workspace and /tmp.

The workspace is copied in before the task runs (so the two share the limit) and what the task leaves
is copied back afterwards; tmpfs pages also count against the memory limit. Each tmpfs is mounted at
``DISK_ROOT/<unique>.<worker pid>``, so a later worker can sweep what a crashed one left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from . import cgroups
from .base import ExecutionRequest
from .linux import MS_NODEV, MS_NOSUID, mount, umount
from .sandbox_root import LAUNCH_ROOT

DISK_ROOT = Path(LAUNCH_ROOT) / "disk"


def make_disk(name: str, request: ExecutionRequest, size: int) -> Path:
    """A host tmpfs of ``size`` bytes holding a copy of the workspace (ws/) and the task's /tmp (tmp/)."""
    disk = DISK_ROOT / name
    disk.mkdir(parents=True)
    mount("tmpfs", str(disk), "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=0755")
    try:
        shutil.copytree(request.workspace, disk / "ws", symlinks=True, dirs_exist_ok=True)
        (disk / "tmp").mkdir(mode=0o1777)
        os.chmod(disk / "tmp", 0o1777)
        if request.run_as_user is not None:
            chown_tree(disk / "ws", request.run_as_user)
    except BaseException:
        _remove_disk(disk)
        raise
    return disk


def chown_tree(root: Path, uid: int) -> None:
    os.lchown(root, uid, uid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)


def copy_back_and_remove(disk: Path, workspace: Path) -> None:
    """Copy what the task left (regular files, dirs, symlinks as links; never fifos or devices), then unmount."""
    try:
        def special(directory: str, names: list[str]) -> set[str]:
            return {n for n in names if not stat.S_ISREG(m := os.lstat(os.path.join(directory, n)).st_mode)
                    and not stat.S_ISDIR(m) and not stat.S_ISLNK(m)}
        shutil.copytree(disk / "ws", workspace, symlinks=True, dirs_exist_ok=True, ignore=special)
    finally:
        _remove_disk(disk)


def sweep_disks() -> None:
    """Unmount the disks of workers that are gone (same naming rule as their cgroups)."""
    with contextlib.suppress(OSError):
        for entry in DISK_ROOT.iterdir():
            if not cgroups._owner_alive(entry.name):  # noqa: SLF001 - same naming rule as the cgroups
                _remove_disk(entry)


def _remove_disk(disk: Path) -> None:
    with contextlib.suppress(OSError):
        umount(str(disk))
    with contextlib.suppress(OSError):
        disk.rmdir()
