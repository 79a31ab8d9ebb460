"""Our two seccomp profiles, kept once as data and rendered two ways.

Both profiles are deny-lists (default action: allow) so that ordinary build
tools -- sh, make, gcc, python, go -- run unchanged: an allow-list of a few
syscalls breaks every real program, and a full allow-list has to chase each
new kernel. What we deny and why:

``expbuild-default`` ("RuntimeDefault" for the namespace executor) refuses
what changes the machine rather than the task: loading kernels and modules,
rebooting, swap, the clock, process accounting, quotas, raw I/O ports, kernel
keyrings, BPF and perf (large kernel attack surface, and readable kernel
state), userfaultfd (a staple of kernel exploits), and open_by_handle_at (the
"shocker" container escape). With all capabilities dropped most of these fail
anyway; the filter is the second wall.

``expbuild-strict`` adds everything a task would use to build a sandbox of its
own or to look into a neighbour: new namespaces (unshare, setns, clone with a
CLONE_NEW* flag; clone3 answers ENOSYS so libc falls back to clone, whose flags
a filter can see), every mount API, chroot, ptrace and process_vm_*, kcmp,
io_uring (its operations bypass seccomp), and personality changes.

Denied calls fail with EPERM (ENOSYS for clone3); nothing is killed, so a tool
that probes a feature sees an ordinary error.

``python -m expbuild_isolation.executors.seccomp write manifests/seccomp/``
writes the OCI JSON the Docker, Podman and Kubernetes paths load;
``tests/executors/test_seccomp.py`` checks the committed files equal this data.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PROFILES", "Profile", "Rule", "oci_profile", "load_filter", "compile_filter", "load_compiled", "resolve_profile_name", "write_profiles"]

# clone(2) flags that create namespaces (include/uapi/linux/sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID,
                   CLONE_NEWNET)

# Audit architectures a profile covers; a 64-bit x86 host also runs i386 and x32 binaries,
# which must meet the same rules rather than slip past them.
ARCHITECTURES = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
}


@dataclass(frozen=True)
class Rule:
    """Deny ``names`` with ``errno``; with ``masked_flag``, only when arg 0 has that bit set."""

    names: tuple[str, ...]
    errno: int = errno.EPERM
    masked_flag: int | None = None
    why: str = ""


@dataclass(frozen=True)
class Profile:
    name: str
    rules: tuple[Rule, ...]

    def denied_names(self) -> set[str]:
        return {name for rule in self.rules if rule.masked_flag is None for name in rule.names}


_MACHINE = Rule(why="changes the machine, not the task", names=(
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "create_module",
    "reboot", "swapon", "swapoff", "acct", "settimeofday", "clock_settime", "clock_adjtime", "stime",
    "quotactl", "quotactl_fd", "iopl", "ioperm", "vhangup", "syslog", "lookup_dcookie", "nfsservctl",
    "_sysctl", "uselib", "get_kernel_syms", "query_module"))
_KERNEL_SURFACE = Rule(why="large kernel attack surface or kernel state", names=(
    "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "open_by_handle_at",
    "fanotify_init"))

_NAMESPACES = Rule(why="a sandbox of its own", names=("unshare", "setns"))
_MOUNTS = Rule(why="the mount table", names=(
    "mount", "umount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr", "name_to_handle_at"))
_PEEK = Rule(why="looks into other processes", names=("ptrace", "process_vm_readv", "process_vm_writev",
                                                       "kcmp", "pidfd_getfd"))
_BYPASS = Rule(why="io_uring operations are not seen by seccomp", names=(
    "io_uring_setup", "io_uring_enter", "io_uring_register"))
_PERSONALITY = Rule(why="personality flags weaken ASLR", names=("personality",))
_CLONE3 = Rule(why="clone3 flags are in memory a filter cannot read; libc falls back to clone",
               names=("clone3",), errno=errno.ENOSYS)
_CLONE_NS = tuple(Rule(names=("clone",), masked_flag=flag, why="clone into a new namespace")
                  for flag in NAMESPACE_FLAGS)

_DEFAULT = Profile("expbuild-default", (_MACHINE, _KERNEL_SURFACE))
_STRICT = Profile("expbuild-strict", (_MACHINE, _KERNEL_SURFACE, _NAMESPACES, _MOUNTS, _PEEK, _BYPASS,
                                      _PERSONALITY, _CLONE3, *_CLONE_NS))

PROFILES: dict[str, Profile] = {_DEFAULT.name: _DEFAULT, _STRICT.name: _STRICT}
ALIASES = {"RuntimeDefault": "expbuild-default"}
UNCONFINED = "Unconfined"


def resolve_profile_name(name: str) -> str | None:
    """Our profile name for a task's ``seccompProfile`` (None for Unconfined); ValueError names the choices."""
    if name == UNCONFINED:
        return None
    name = ALIASES.get(name, name)
    if name not in PROFILES:
        known = ", ".join(sorted({*PROFILES, *ALIASES, UNCONFINED}))
        raise ValueError(f"seccompProfile: {name!r} is not a known profile (known: {known})")
    return name


def oci_profile(name: str) -> dict:
    """The profile as Docker/OCI seccomp JSON (``docker run --security-opt seccomp=<file>``)."""
    profile = PROFILES[resolve_profile_name(name) or ""]
    syscalls: list[dict] = []
    for rule in profile.rules:
        entry: dict = {"names": sorted(rule.names), "action": "SCMP_ACT_ERRNO", "errnoRet": rule.errno}
        if rule.masked_flag is not None:
            entry["args"] = [{"index": 0, "value": rule.masked_flag, "valueTwo": rule.masked_flag,
                              "op": "SCMP_CMP_MASKED_EQ"}]
        if rule.why:
            entry["comment"] = rule.why
        syscalls.append(entry)
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "defaultErrnoRet": errno.EPERM,
        # Only ``architectures``: it is what the OCI runtime spec (and so containerd/CRI-O for
        # Kubernetes Localhost profiles) reads, and Docker refuses it beside ``archMap``.
        "architectures": [arch for arches in ARCHITECTURES.values() for arch in arches],
        "syscalls": syscalls,
    }


def load_filter(name: str) -> None:
    """Install the profile in this process (sets no_new_privs); call right before exec.

    A name the running kernel or libseccomp does not know is skipped: a call
    that does not exist cannot be made.
    """
    load_compiled(compile_filter(name))


def compile_filter(name: str) -> bytes:
    """The profile as a classic-BPF program for this machine (``struct sock_filter`` array).

    Built once per profile by the namespace launcher and loaded raw in every
    task (``load_compiled``): building it through libseccomp costs about a
    millisecond per task. libseccomp is asked for its binary-tree layout, so an
    allowed syscall meets a few comparisons rather than one per rule.
    """
    import pyseccomp as seccomp  # imported here: the OCI rendering must work without libseccomp

    profile = PROFILES[resolve_profile_name(name) or ""]
    flt = seccomp.SyscallFilter(seccomp.ALLOW)
    try:
        flt.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)
    except (OSError, ValueError, RuntimeError):
        pass  # libseccomp < 2.5: the linear layout
    native = seccomp.system_arch()
    for extra in {seccomp.Arch.X86_64: (seccomp.Arch.X86, seccomp.Arch.X32),
                  seccomp.Arch.AARCH64: (seccomp.Arch.ARM,)}.get(native, ()):
        try:
            flt.add_arch(extra)
        except OSError:
            pass  # the kernel was built without that ABI
    for rule in profile.rules:
        args = () if rule.masked_flag is None else (
            seccomp.Arg(0, seccomp.MASKED_EQ, rule.masked_flag, rule.masked_flag),)
        for syscall in rule.names:
            try:
                flt.add_rule(seccomp.ERRNO(rule.errno), syscall, *args)
            except (OSError, ValueError, RuntimeError):
                continue
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "rb", buffering=0) as handle:
            flt.export_bpf(handle)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    program = b"".join(chunks)
    if not program or len(program) % 8:
        raise RuntimeError(f"libseccomp exported a {len(program)}-byte program for {name}")
    return program


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2


def load_compiled(program: bytes) -> None:
    """Install a program from ``compile_filter`` in this thread (sets no_new_privs first).

    No SECCOMP_FILTER_FLAG_SPEC_ALLOW: where the kernel runs with
    spec_store_bypass_disable=seccomp it keeps the task's SSB mitigation (since
    Linux 5.16 the default mode, prctl, does not tie it to seccomp at all).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(NO_NEW_PRIVS): {os.strerror(err)}")
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter: {os.strerror(err)}")


def write_profiles(directory: Path) -> list[Path]:
    """Write ``<name>.json`` for every profile into ``directory``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PROFILES:
        path = directory / f"{name}.json"
        path.write_text(render_json(name))
        written.append(path)
    return written


def render_json(name: str) -> str:
    return json.dumps(oci_profile(name), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "write":
        print("usage: python -m expbuild_isolation.executors.seccomp write <directory>", file=sys.stderr)
        return 2
    for path in write_profiles(Path(argv[1])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
