"""A namespace sandbox's file system: a fresh root, the task's directories in it, pivot_root.

With ``rootfs = "host"`` the root is a small tmpfs holding read-only binds of the host's programs
(``HOST_DIRS``) and a minimal /etc; otherwise the given directory under a private writable layer. Every root gets a fresh /proc
(tunables read-only, kernel state masked), a minimal read-only /dev and a /dev/shm. A spare builds all of that before its task is known
(``build``); the task's workspace and /tmp come when it does (``task_mounts``). Runs in the
launcher's forked children, inside their new mount namespace; imports nothing heavy.
"""

from __future__ import annotations

import os

from .launch import LaunchSpec, Prepared
from ..linux import (MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT, mount,
                    move_mount, pivot_root, umount)

LAUNCH_ROOT = "/run/expbuild-isolation"
ROOT_MOUNTPOINT = f"{LAUNCH_ROOT}/root"   # every task mounts its root here, each in its own mount namespace
HOST_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_BINDS = ("nsswitch.conf", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime",
             "host.conf", "gai.conf")
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
PROC_READ_ONLY = ("bus", "fs", "irq", "sys", "sysrq-trigger")
PROC_MASKED = ("acpi", "asound", "kallsyms", "kcore", "keys", "latency_stats", "sched_debug", "scsi", "timer_list",
               "timer_stats")


def build(prep: Prepared, default: LaunchSpec) -> str:
    """The task-independent root, pivoted into if ``prep.pivot_early``; returns where it is ("" once pivoted)."""
    root = ROOT_MOUNTPOINT
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    if prep.rootfs == "host":
        _host_root(root)
        if prep.host_network:
            _host_resolver(root)
        host_etc(root, default)
    else:
        root = _private_layer(prep.rootfs, root, prep.shm_size_bytes)
    _populate(root, prep.shm_size_bytes)
    if prep.pivot_early:
        pivot(root)
        root = ""
    return root


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


def _private_layer(rootfs: str, mountpoint: str, size: int) -> str:
    """A directory rootfs under a writable layer of the task's own; returns the new root.

    overlayfs with the directory as its read-only lower layer and the upper one on a tmpfs of ``size``
    bytes in this mount namespace: a task allowed to write its root (``readOnlyRootFilesystem: false``)
    changes only its copy, gone with the task; the directory itself is never written, not even the mount
    points this module adds.
    """
    mount("tmpfs", mountpoint, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=0755")
    for name in ("upper", "work", "root"):
        os.mkdir(f"{mountpoint}/{name}")
    lower = os.path.abspath(rootfs).replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")
    mount("overlay", f"{mountpoint}/root", "overlay", MS_NOSUID | MS_NODEV,
          f"lowerdir={lower},upperdir={mountpoint}/upper,workdir={mountpoint}/work")
    return f"{mountpoint}/root"


def etc_key(spec: LaunchSpec) -> tuple:
    """What :func:`host_etc` writes depends on: a task whose key differs from the spare's rewrites it."""
    return spec.uid, spec.gid, spec.hostname, spec.network == "full"


def _host_resolver(root: str) -> None:
    """Full networking: the host's resolver configuration."""
    for name in ("resolv.conf", "hosts"):
        _bind_file(f"/etc/{name}", f"{root}/etc/{name}")


def host_etc(root: str, spec: LaunchSpec) -> None:
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
    _mask_proc(f"{root}/proc")
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


def _mask_proc(proc: str) -> None:
    """As runc does: kernel tunables read-only; kernel state a task has no business reading (symbol
    addresses, keys, timers and scheduler state of the whole machine, hardware) masked -- /dev/null over
    a file, an empty read-only tmpfs over a directory."""
    for name in PROC_READ_ONLY:
        if os.path.exists(f"{proc}/{name}"):
            _bind(f"{proc}/{name}", f"{proc}/{name}", readonly=True, extra=MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_MASKED:
        path = f"{proc}/{name}"
        if os.path.isdir(path):
            mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555")
        elif os.path.exists(path):
            _bind("/dev/null", path, readonly=True, extra=MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _attach(tree: int | None, source: str, target: str, *, extra: int = MS_NOSUID | MS_NODEV) -> None:
    if tree is None:
        mount(source, target, None, MS_BIND | MS_REC)
    else:
        move_mount(tree, target, f"move_mount {source} to {target}")
        os.close(tree)
    mount(None, target, None, MS_BIND | MS_REMOUNT | extra)


def task_mounts(root: str, spec: LaunchSpec, trees: dict[str, int]) -> None:
    """The task's own directories: the workspace and /tmp."""
    _attach(trees.get("workspace"), spec.workspace, f"{root}/workspace")
    if spec.tmp_source:
        _attach(trees.get("tmp"), spec.tmp_source, f"{root}/tmp", extra=MS_NOSUID | MS_NODEV | MS_NOEXEC)
    else:
        mount("tmpfs", f"{root}/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              f"size={spec.tmp_size_bytes},mode=1777")


def pivot(root: str) -> None:
    os.chdir(root)
    pivot_root(b".", b".")
    umount(".")   # the old root, stacked under the new one by pivot_root(".", ".")
    os.chdir("/")


def make_root_read_only() -> None:
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
