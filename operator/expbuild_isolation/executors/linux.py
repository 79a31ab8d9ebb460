"""The Linux calls the sandbox needs and Python's ``os`` lacks, as thin ctypes wrappers, with their constants.

Each raises OSError with the call and the errno's text when the kernel refuses. This module imports
nothing heavy: the namespace executor's launcher uses it in every forked child.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWCGROUP = 0x20000000, 0x40000000, 0x02000000
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

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    check(libc.umount2(target.encode(), flags), f"umount {target}")


def open_tree(path: str) -> int | None:
    """A detached copy of the mount tree at ``path`` (open_tree(2), Linux 5.2+), or None where unsupported.

    A spare's mount namespace was copied before its task existed and no longer sees host mounts made
    since (a disk-limited task's tmpfs, say): the worker opens the task's directories as detached trees
    in its own namespace and the spare attaches them with move_mount(2).
    """
    fd = libc.syscall(SYS_OPEN_TREE, AT_FDCWD, path.encode(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)
    return fd if fd >= 0 else None


def move_mount(tree: int, target: str, what: str) -> None:
    """Attach a tree from :func:`open_tree` at ``target``."""
    check(libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH), what)


def pivot_root(new_root: bytes, put_old: bytes) -> None:
    check(libc.syscall(SYS_PIVOT_ROOT[platform.machine()], new_root, put_old), "pivot_root")


def capset_none() -> None:
    """No capabilities at all (effective, permitted, inheritable) for this thread."""
    header = struct.pack("II", 0x20080522, 0)        # _LINUX_CAPABILITY_VERSION_3, this thread
    data = ctypes.create_string_buffer(24)           # two zeroed __user_cap_data_struct: no caps at all
    check(libc.syscall(SYS_CAPSET[platform.machine()], ctypes.c_char_p(header), data), "capset")


def unshare(flags: int) -> None:
    check(libc.unshare(flags), "unshare")
