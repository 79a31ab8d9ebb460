"""Docker's default seccomp profile: the yardstick our ``expbuild-default`` must meet on every point.

Docker, Podman and a Kubernetes ``RuntimeDefault`` each apply the engine's own default profile. Ours
*replaces* it for the Docker and Podman backends (and is what ``RuntimeDefault`` means for the namespace
executor), so ours must refuse at least what Docker's refuses. This module states what that is, for a
container holding no capabilities (every backend drops them all), in our own words and as data, from:

- Docker's documentation, "Seccomp security profiles for Docker", the table "Significant syscalls blocked
  by the default profile" (https://docs.docker.com/engine/security/seccomp/);
- moby's ``profiles/seccomp/default.json``, an allow-list: a call it allows only to the holder of a
  capability (``includes.caps``) is refused to us; ``clone`` is allowed only when none of the namespace
  flags is set (``SCMP_CMP_MASKED_EQ`` against 0x7E020000); ``clone3`` is answered ENOSYS so that libc
  falls back to ``clone``, whose flags a filter can read; ``personality`` is allowed for five values only;
  ``socket`` is refused for AF_VSOCK;
- moby pull request 46762 (Docker 25): ``io_uring_setup``, ``io_uring_enter`` and ``io_uring_register``
  left the allow-list (io_uring runs operations that seccomp never sees).

Where the two sources differ, the stricter reading is kept: the documentation lists ``ptrace``,
``process_vm_readv``/``writev`` and ``clock_adjtime`` as blocked, the profile allows the first three on
kernels from 4.8 and the last one for reading; older profiles gate ``name_to_handle_at`` on CAP_SYS_ADMIN.

What a list of refusals cannot say: an allow-list also refuses every system call newer than itself,
while a deny-list like ours lets them through. ``tests/executors/test_seccomp.py`` checks that
expbuild-default refuses every call :func:`refuses` says Docker refuses.
"""

from __future__ import annotations

import errno

# syscall -> why Docker refuses it to a container without capabilities
REFUSED: dict[str, str] = {
    # the documentation's table
    "acct": "process accounting is the host's",
    "add_key": "kernel keyrings are not namespaced",
    "keyctl": "kernel keyrings are not namespaced",
    "request_key": "kernel keyrings are not namespaced",
    "bpf": "loads programs into the kernel",
    "clock_adjtime": "the clock is not namespaced",
    "clock_settime": "the clock is not namespaced",
    "settimeofday": "the clock is not namespaced",
    "stime": "the clock is not namespaced",
    "create_module": "kernel modules",
    "delete_module": "kernel modules",
    "finit_module": "kernel modules",
    "init_module": "kernel modules",
    "query_module": "kernel modules",
    "get_kernel_syms": "kernel symbols",
    "get_mempolicy": "NUMA memory policy",
    "mbind": "NUMA memory policy",
    "set_mempolicy": "NUMA memory policy",
    "move_pages": "NUMA memory policy",
    "ioperm": "I/O port privilege",
    "iopl": "I/O port privilege",
    "kcmp": "inspects other processes",
    "process_vm_readv": "inspects other processes",
    "process_vm_writev": "inspects other processes",
    "ptrace": "inspects other processes",
    "kexec_file_load": "loads a new kernel",
    "kexec_load": "loads a new kernel",
    "lookup_dcookie": "tracing that leaks host information",
    "perf_event_open": "tracing that leaks host information",
    "mount": "mounts",
    "umount": "mounts",
    "umount2": "mounts",
    "pivot_root": "mounts",
    "nfsservctl": "the kernel NFS server",
    "open_by_handle_at": "opens files by handle, past the root (an old container escape)",
    "quotactl": "disk quotas are the host's",
    "reboot": "reboots the host",
    "setns": "joins namespaces",
    "unshare": "creates namespaces",
    "swapon": "swap is the host's",
    "swapoff": "swap is the host's",
    "sysfs": "obsolete",
    "_sysctl": "obsolete",
    "uselib": "obsolete",
    "ustat": "obsolete",
    "userfaultfd": "userspace page-fault handling, a staple of kernel exploits",
    "vm86": "in-kernel x86 real mode",
    "vm86old": "in-kernel x86 real mode",
    # capability-gated in default.json (we hold none)
    "chroot": "CAP_SYS_CHROOT",
    "clock_settime64": "CAP_SYS_TIME",
    "fanotify_init": "CAP_SYS_ADMIN",
    "fsconfig": "CAP_SYS_ADMIN (mount API)",
    "fsmount": "CAP_SYS_ADMIN (mount API)",
    "fsopen": "CAP_SYS_ADMIN (mount API)",
    "fspick": "CAP_SYS_ADMIN (mount API)",
    "mount_setattr": "CAP_SYS_ADMIN (mount API)",
    "move_mount": "CAP_SYS_ADMIN (mount API)",
    "open_tree": "CAP_SYS_ADMIN (mount API)",
    "name_to_handle_at": "CAP_SYS_ADMIN in older profiles",
    "quotactl_fd": "CAP_SYS_ADMIN",
    "sethostname": "CAP_SYS_ADMIN",
    "setdomainname": "CAP_SYS_ADMIN",
    "syslog": "CAP_SYSLOG",
    "pidfd_getfd": "CAP_SYS_PTRACE",
    "process_madvise": "CAP_SYS_PTRACE",
    "vhangup": "CAP_SYS_TTY_CONFIG",
    "set_mempolicy_home_node": "CAP_SYS_NICE",
    # moby pull request 46762
    "io_uring_setup": "io_uring operations are not seen by seccomp",
    "io_uring_enter": "io_uring operations are not seen by seccomp",
    "io_uring_register": "io_uring operations are not seen by seccomp",
}

# clone(2) is allowed only when (flags & CLONE_NAMESPACE_FLAGS) == 0: CLONE_NEWNS | CLONE_NEWCGROUP |
# CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET.
CLONE_NAMESPACE_FLAGS = 0x7E020000
CLONE3_ERRNO = errno.ENOSYS
# personality(2): PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query 0xffffffff.
PERSONALITY_ALLOWED = frozenset({0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF})
SOCKET_FAMILIES_REFUSED = frozenset({40})   # AF_VSOCK: a channel to the hypervisor's host


def refuses(syscall: str, arg0: int = 0) -> int | None:
    """The errno Docker's default answers ``syscall(arg0, ...)`` with, or None when the call goes through."""
    if syscall in REFUSED:
        return errno.EPERM
    if syscall == "clone3":
        return CLONE3_ERRNO
    if syscall == "clone" and arg0 & CLONE_NAMESPACE_FLAGS:
        return errno.EPERM
    if syscall == "personality" and arg0 not in PERSONALITY_ALLOWED:
        return errno.EPERM
    if syscall == "socket" and arg0 in SOCKET_FAMILIES_REFUSED:
        return errno.EPERM
    return None
