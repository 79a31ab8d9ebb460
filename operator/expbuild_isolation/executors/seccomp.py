"""Our two seccomp profiles, kept once as data and rendered two ways.

Both profiles are deny-lists (default action: allow) so that ordinary build
tools -- sh, make, gcc, python, go -- run unchanged: an allow-list of a few
syscalls breaks every real program, and a full allow-list has to chase each
new kernel. What we deny and why:

``expbuild-default`` ("RuntimeDefault" for the namespace executor; the profile
the Docker and Podman backends load *instead of* the engine's default) refuses
at least everything Docker's default profile refuses to a container without
capabilities (``docker_default_seccomp.py``; a test holds us to it): whatever
changes the machine rather than the task (kernels and modules, reboot, swap,
the clock, accounting, quotas, I/O ports, NUMA policy, the hostname); a large
kernel attack surface (keyrings, BPF, perf, userfaultfd, io_uring, whose
operations seccomp never sees, AF_VSOCK sockets); every way to build a sandbox
of one's own -- above all user namespaces, the door to the mount and netfilter
code behind many kernel exploits (unshare, setns, clone with a CLONE_NEW* flag;
clone3 answers ENOSYS so libc falls back to clone, whose flags a filter can
read), the mount API, chroot, open_by_handle_at; looking into other processes
(ptrace, process_vm_*, kcmp, pidfd_getfd); personality values beyond the five
Docker allows. With all capabilities dropped many of these fail anyway; the
filter is the second wall, and the first one wherever a user namespace would
hand the task capabilities back.

``expbuild-strict`` adds what a build rarely needs: any personality change,
Linux AIO, memfd_secret, remap_file_pages.

Denied calls fail with EPERM (ENOSYS for clone3); nothing is killed, so a tool
that probes a feature sees an ordinary error. A syscall name libseccomp does
not know fails the rendering (``SeccompProfileError``) instead of being
dropped: a typo must never open a hole.

``python -m expbuild_isolation.executors.seccomp write manifests/seccomp/``
writes the OCI JSON the Docker, Podman and Kubernetes paths load;
``tests/executors/test_seccomp.py`` checks the committed files equal this data.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PROFILES", "ArgTest", "Profile", "Rule", "SeccompProfileError", "check_names", "compile_filter",
           "compile_profile", "load_compiled", "load_filter", "oci_profile", "render_oci", "resolve_profile_name",
           "unknown_syscalls", "write_profiles"]

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
AF_VSOCK = 40
# personality(2) values that stay allowed: PER_LINUX, PER_LINUX32, UNAME26 with either, the query.
PERSONALITY_SAFE = frozenset({0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF})

# Audit architectures a profile covers; a 64-bit x86 host also runs i386 and x32 binaries,
# which must meet the same rules rather than slip past them.
ARCHITECTURES = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
}


class SeccompProfileError(ValueError):
    """A profile cannot be rendered exactly as written (an unknown syscall name, a rule libseccomp refuses)."""


@dataclass(frozen=True)
class ArgTest:
    """A test of one argument as libseccomp makes it: ``EQ``/``GT`` against ``value``, or ``MASKED_EQ``:
    ``(arg & mask) == value``."""

    index: int
    op: str
    value: int
    mask: int = 0

    def holds(self, arg: int) -> bool:
        if self.op == "MASKED_EQ":
            return arg & self.mask == self.value
        return arg == self.value if self.op == "EQ" else arg > self.value

    def oci(self) -> dict:
        # OCI (runc, crun) and libseccomp take MASKED_EQ as (mask, value); the others as (value, 0).
        first, second = (self.mask, self.value) if self.op == "MASKED_EQ" else (self.value, 0)
        return {"index": self.index, "op": f"SCMP_CMP_{self.op}", "value": first, "valueTwo": second}


@dataclass(frozen=True)
class Rule:
    """Deny ``names`` with ``errno``; with ``arg``, only when that argument test holds."""

    names: tuple[str, ...]
    errno: int = errno.EPERM
    arg: ArgTest | None = None
    why: str = ""


@dataclass(frozen=True)
class Profile:
    name: str
    rules: tuple[Rule, ...]

    def denied_names(self) -> set[str]:
        return {name for rule in self.rules if rule.arg is None for name in rule.names}

    def refuses(self, syscall: str, arg0: int = 0) -> int | None:
        """The errno this profile answers ``syscall(arg0, ...)`` with, or None when the call goes through."""
        for rule in self.rules:
            if syscall in rule.names and (rule.arg is None or rule.arg.holds(arg0)):
                return rule.errno
        return None


def _outside(allowed: frozenset[int], bits: int = 32) -> list[tuple[int, int]]:
    """(mask, value) pairs whose MASKED_EQ matches cover exactly the ``bits``-wide numbers not in ``allowed``.

    A filter rule may test an argument once, and rules only add refusals: "anything but these values"
    becomes one rule per branch that leaves the binary tree of the allowed values.
    """
    cubes: list[tuple[int, int]] = []

    def split(bit: int, mask: int, value: int, members: set[int]) -> None:
        if not members:
            cubes.append((mask, value))
        elif bit >= 0:
            ones = {m for m in members if m >> bit & 1}
            split(bit - 1, mask | 1 << bit, value | 1 << bit, ones)
            split(bit - 1, mask | 1 << bit, value, members - ones)

    split(bits - 1, 0, 0, set(allowed))
    return cubes


_MACHINE = Rule(why="changes the machine, not the task", names=(
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "create_module",
    "reboot", "swapon", "swapoff", "acct", "settimeofday", "clock_settime", "clock_settime64", "clock_adjtime",
    "clock_adjtime64", "stime", "quotactl", "quotactl_fd", "iopl", "ioperm", "vhangup", "syslog",
    "lookup_dcookie", "nfsservctl", "_sysctl", "uselib", "get_kernel_syms", "query_module", "sysfs", "ustat",
    "vm86", "vm86old", "sethostname", "setdomainname"))
_NUMA = Rule(why="memory placement is the machine's", names=(
    "get_mempolicy", "set_mempolicy", "set_mempolicy_home_node", "mbind", "move_pages"))
_KERNEL_SURFACE = Rule(why="large kernel attack surface or kernel state", names=(
    "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "open_by_handle_at",
    "name_to_handle_at", "fanotify_init"))
_BYPASS = Rule(why="io_uring operations are not seen by seccomp", names=(
    "io_uring_setup", "io_uring_enter", "io_uring_register"))
_VSOCK = Rule(names=("socket",), arg=ArgTest(0, "EQ", AF_VSOCK), why="AF_VSOCK reaches the hypervisor's host")
_NAMESPACES = Rule(why="a sandbox of its own", names=("unshare", "setns"))
_CLONE3 = Rule(why="clone3 flags are in memory a filter cannot read; libc falls back to clone",
               names=("clone3",), errno=errno.ENOSYS)
_CLONE_NS = tuple(Rule(names=("clone",), arg=ArgTest(0, "MASKED_EQ", flag, mask=flag),
                       why="clone into a new namespace") for flag in NAMESPACE_FLAGS)
_MOUNTS = Rule(why="the mount table", names=(
    "mount", "umount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr"))
_PEEK = Rule(why="looks into other processes", names=(
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "process_madvise"))
# The kernel reads personality's argument as an unsigned int: the low 32 bits decide, anything above is refused.
_PERSONALITY = (Rule(names=("personality",), arg=ArgTest(0, "GT", 0xFFFFFFFF), why="personality beyond 32 bits"),
                *(Rule(names=("personality",), arg=ArgTest(0, "MASKED_EQ", value, mask=mask),
                       why="personality flags weaken ASLR or select foreign ABIs")
                  for mask, value in _outside(PERSONALITY_SAFE)))
_STRICT_EXTRAS = Rule(why="rarely needed by a build: any personality change, Linux AIO, secret memory", names=(
    "personality", "io_setup", "io_submit", "io_getevents", "io_pgetevents", "io_cancel", "io_destroy",
    "memfd_secret", "remap_file_pages"))

_COMMON = (_MACHINE, _NUMA, _KERNEL_SURFACE, _BYPASS, _VSOCK, _NAMESPACES, _CLONE3, *_CLONE_NS, _MOUNTS, _PEEK)
_DEFAULT = Profile("expbuild-default", (*_COMMON, *_PERSONALITY))
_STRICT = Profile("expbuild-strict", (*_COMMON, _STRICT_EXTRAS))

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


def _profile(name: str) -> Profile:
    return PROFILES[resolve_profile_name(name) or ""]


@functools.cache
def unknown_syscalls(profile: Profile) -> tuple[str, ...]:
    """The names in ``profile`` that libseccomp knows on no architecture (typos, or calls newer than it)."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as exc:
        raise SeccompProfileError(f"{profile.name}: cannot check its syscall names without libseccomp "
                                  f"(pyseccomp): {exc}") from None
    names = sorted({name for rule in profile.rules for name in rule.names})
    return tuple(name for name in names if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) == -1)


def check_names(profile: Profile) -> None:
    """Refuse a profile that names a syscall libseccomp does not know: it would otherwise be dropped."""
    unknown = unknown_syscalls(profile)
    if unknown:
        raise SeccompProfileError(f"{profile.name}: unknown syscall name(s) {', '.join(map(repr, unknown))}: "
                                  f"libseccomp knows no such call on any architecture; the filter is not built "
                                  f"(fix the name, or upgrade libseccomp for a newer call)")


def oci_profile(name: str) -> dict:
    """The profile as Docker/OCI seccomp JSON (``docker run --security-opt seccomp=<file>``)."""
    return render_oci(_profile(name))


def render_oci(profile: Profile) -> dict:
    check_names(profile)
    syscalls: list[dict] = []
    for rule in profile.rules:
        entry: dict = {"names": sorted(rule.names), "action": "SCMP_ACT_ERRNO", "errnoRet": rule.errno}
        if rule.arg is not None:
            entry["args"] = [rule.arg.oci()]
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
    """Install the profile in this process (sets no_new_privs); call right before exec."""
    load_compiled(compile_filter(name))


def compile_filter(name: str) -> bytes:
    return compile_profile(_profile(name))


def compile_profile(profile: Profile) -> bytes:
    """The profile as a classic-BPF program for this machine (``struct sock_filter`` array).

    Built once per profile by the namespace launcher and loaded raw in every
    task (``load_compiled``): building it through libseccomp costs about a
    millisecond per task. libseccomp is asked for its binary-tree layout, so an
    allowed syscall meets a few comparisons rather than one per rule. A name
    this libseccomp knows on another architecture only (vm86 on x86_64) lands
    in that architecture's part; a name it does not know at all fails.
    """
    import pyseccomp as seccomp  # imported here: the OCI rendering must work without loading a filter

    check_names(profile)
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
    ops = {"EQ": seccomp.EQ, "GT": seccomp.GT, "MASKED_EQ": seccomp.MASKED_EQ}
    for rule in profile.rules:
        args = () if rule.arg is None else (
            seccomp.Arg(rule.arg.index, ops[rule.arg.op], *((rule.arg.mask, rule.arg.value)
                                                             if rule.arg.op == "MASKED_EQ" else (rule.arg.value,))),)
        for syscall in rule.names:
            try:
                flt.add_rule(seccomp.ERRNO(rule.errno), syscall, *args)
            except (OSError, ValueError, RuntimeError) as exc:
                raise SeccompProfileError(f"{profile.name}: libseccomp refused the rule for {syscall!r}: {exc}; "
                                          f"the filter is not built") from None
    return _export(flt, profile.name)


def _export(flt, name: str) -> bytes:  # type: ignore[no-untyped-def]
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
