"""The seccomp profiles: one source of truth, at least as strict as Docker's default, rendered to OCI JSON
and loaded through libseccomp; every refusal is checked against the kernel's own answer."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from expbuild_isolation.executors import docker_default_seccomp as docker_default
from expbuild_isolation.executors import seccomp

REPO = Path(__file__).resolve().parents[2]
LAUNCH = ("import os, sys\nfrom expbuild_isolation.executors.seccomp import load_filter\n"
          "load_filter(sys.argv[1])\nos.execvp(sys.argv[2], sys.argv[2:])\n")
DEFAULT, STRICT = seccomp.PROFILES["expbuild-default"], seccomp.PROFILES["expbuild-strict"]
MARK = 133   # EHWPOISON: no system call answers it by itself, so seen it can only come from the filter


def run_under(profile: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LAUNCH, profile, *argv], capture_output=True, text=True,
                          timeout=60)


def personality_samples() -> list[int]:
    """Docker's allowed values, every single flag bit alone and beside them, and random 32-bit values."""
    picked = set(docker_default.PERSONALITY_ALLOWED)
    for bit in range(32):
        picked |= {1 << bit, 0x8 | 1 << bit, 0x20000 | 1 << bit, 0xFFFFFFFF ^ 1 << bit}
    rng = random.Random(13)
    picked |= {rng.getrandbits(32) for _ in range(2000)} | {0x1_0000_0000, 0xFFFF_FFFF_FFFF_FFFF}
    return sorted(picked)


# -- one source of truth ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(seccomp.PROFILES))
def test_the_committed_json_is_what_the_code_renders(name):
    committed = (REPO / "manifests" / "seccomp" / f"{name}.json").read_text()
    assert committed == seccomp.render_json(name), (
        "run: python -m expbuild_isolation.executors.seccomp write manifests/seccomp/")


def test_the_oci_profile_has_the_shape_docker_reads():
    profile = seccomp.oci_profile("expbuild-default")
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    assert "SCMP_ARCH_X86_64" in profile["architectures"]
    clone_rules = [s for s in profile["syscalls"] if s["names"] == ["clone"]]
    assert {rule["args"][0]["value"] for rule in clone_rules} == set(seccomp.NAMESPACE_FLAGS)
    assert all(s["action"] == "SCMP_ACT_ERRNO" and s["errnoRet"] > 0 for s in profile["syscalls"])
    assert all(len(s.get("args", [])) <= 1 for s in profile["syscalls"])   # runc ORs tests of one argument
    json.dumps(profile)


def test_runtime_default_means_expbuild_default_and_unknown_names_are_refused():
    assert seccomp.resolve_profile_name("RuntimeDefault") == "expbuild-default"
    assert seccomp.resolve_profile_name("Unconfined") is None
    with pytest.raises(ValueError, match="known:"):
        seccomp.resolve_profile_name("docker-default")


def test_the_generator_writes_both_files(tmp_path):
    out = subprocess.run([sys.executable, "-m", "expbuild_isolation.executors.seccomp", "write", str(tmp_path)],
                         capture_output=True, text=True, check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expbuild-default.json", "expbuild-strict.json"]
    assert "expbuild-strict.json" in out.stdout


# -- at least as strict as Docker, and strict at least as strict as default -----------------------------

def test_expbuild_default_refuses_everything_dockers_default_refuses():
    missing = [name for name in docker_default.REFUSED if DEFAULT.refuses(name) is None]
    assert missing == []
    assert DEFAULT.refuses("clone3") == docker_default.CLONE3_ERRNO == errno.ENOSYS
    for bit in range(32):
        flags = 1 << bit | 17   # SIGCHLD in the low byte, as fork() passes it
        if docker_default.refuses("clone", flags):
            assert DEFAULT.refuses("clone", flags) == errno.EPERM, hex(flags)
    assert DEFAULT.refuses("clone", 17) is None and docker_default.refuses("clone", 17) is None
    for value in personality_samples():
        if docker_default.refuses("personality", value):
            assert DEFAULT.refuses("personality", value) == errno.EPERM, hex(value)
    for family in docker_default.SOCKET_FAMILIES_REFUSED:
        assert DEFAULT.refuses("socket", family) == errno.EPERM


def test_personality_keeps_exactly_the_values_docker_keeps():
    """Not stricter than needed: build tools that select PER_LINUX32 (``linux32``) or query still work."""
    for value in personality_samples():
        assert (DEFAULT.refuses("personality", value) is None) == (value in docker_default.PERSONALITY_ALLOWED), \
            hex(value)


def test_strict_refuses_everything_default_refuses_and_more():
    assert DEFAULT.denied_names() < STRICT.denied_names()
    calls = [(name, 0) for rule in DEFAULT.rules for name in rule.names]
    calls += [("clone", 1 << bit) for bit in range(32)] + [("personality", v) for v in personality_samples()]
    calls += [("socket", seccomp.AF_VSOCK)]
    assert [call for call in calls if DEFAULT.refuses(*call) and not STRICT.refuses(*call)] == []


# -- fail closed -----------------------------------------------------------------------------------------

def test_an_unknown_syscall_name_fails_both_renderings_instead_of_being_dropped():
    typo = seccomp.Profile("expbuild-typo", (seccomp.Rule(names=("unshare", "keyctll")),))
    with pytest.raises(seccomp.SeccompProfileError, match=r"expbuild-typo: unknown syscall name\(s\) 'keyctll'"):
        seccomp.render_oci(typo)
    with pytest.raises(seccomp.SeccompProfileError, match="'keyctll'.*the filter is not built"):
        seccomp.compile_profile(typo)
    assert seccomp.unknown_syscalls(DEFAULT) == () and seccomp.unknown_syscalls(STRICT) == ()


# -- the kernel's answer ---------------------------------------------------------------------------------

def test_ordinary_build_tools_run_under_the_default_profile(tmp_path):
    (tmp_path / "a.c").write_text("int main(void){return 0;}\n")
    script = (f"cd {tmp_path} && cc a.c -o a && ./a && make --version >/dev/null && "
              "python3 -c 'import subprocess, threading; subprocess.run([\"true\"], check=True)' && echo ok")
    result = run_under("expbuild-default", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


CALL_EVERY_REFUSED = """
import ctypes, dataclasses, json, os, sys
import pyseccomp
from expbuild_isolation.executors import seccomp
names, mark = json.loads(sys.argv[1]), int(sys.argv[2])
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
if mark:
    profile = seccomp.PROFILES["expbuild-default"]
    marked = seccomp.Profile(profile.name, tuple(dataclasses.replace(r, errno=mark) for r in profile.rules))
    seccomp.load_compiled(seccomp.compile_profile(marked))
libc = ctypes.CDLL(None, use_errno=True)
answers = {}
for name in names:
    number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    ctypes.set_errno(0)
    rc = libc.syscall(number, 0, 0, 0, 0, 0, 0)
    answers[name] = ctypes.get_errno() if rc == -1 else 0
print(json.dumps(answers))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to nobody first, which needs root")
def test_every_call_docker_refuses_is_answered_by_the_compiled_default_filter():
    """Each call is made with zero arguments by nobody without capabilities (so, unfiltered, none of them
    can change anything); the filter is built with a marker errno no call returns on its own."""
    import pyseccomp
    # ptrace(0) is PTRACE_TRACEME: harmless, but it would leave the probe traced by pytest.
    names = sorted(n for n in docker_default.REFUSED
                   if n != "ptrace" and pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, n) >= 0)
    assert len(names) > 50

    def answers(mark: int) -> dict[str, int]:
        done = subprocess.run([sys.executable, "-c", CALL_EVERY_REFUSED, json.dumps(names), str(mark)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    unfiltered = answers(0)
    assert [n for n, e in unfiltered.items() if e == MARK] == []   # positive control: the mark is the filter's
    assert {n: e for n, e in answers(MARK).items() if e != MARK} == {}


PERSONALITY = """
import ctypes, json, os, sys
from expbuild_isolation.executors.seccomp import compile_filter, load_compiled
program = compile_filter(sys.argv[1]) if sys.argv[1] else None   # before dropping: /root holds the libraries
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
if program:
    load_compiled(program)
libc = ctypes.CDLL(None, use_errno=True)
libc.personality.argtypes = (ctypes.c_ulong,)
answers = {}
for value in json.loads(sys.argv[2]):
    ctypes.set_errno(0)
    rc = libc.personality(value)
    answers[hex(value)] = ctypes.get_errno() if rc == -1 else 0
    libc.personality(0)
print(json.dumps(answers))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to nobody first, which needs root")
@pytest.mark.parametrize("profile, allowed", [("expbuild-default", {"0x0", "0x8", "0x20000", "0x20008", "0xffffffff"}),
                                              ("expbuild-strict", set())])
def test_personality_values_beyond_the_safe_ones_are_refused_by_the_kernel(profile, allowed):
    values = [0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF, 0x0040000, 0x0400000, 0x0200000, 0x0100000, 0x0008,
              0x20000 | 0x0040000, 0x1, 0x80000000, 0xFFFFFFFE]

    def answers(name: str) -> dict[str, int]:
        done = subprocess.run([sys.executable, "-c", PERSONALITY, name, json.dumps(values)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    worked_unfiltered = {v for v, e in answers("").items() if e == 0}
    assert worked_unfiltered >= {hex(v) for v in values} - {"0x1", "0x80000000", "0xfffffffe"}   # the control
    filtered = answers(profile)
    assert {v for v, e in filtered.items() if e == 0} == allowed
    assert {e for e in filtered.values()} <= {0, errno.EPERM}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: as root unshare/mount would succeed without the filter")
@pytest.mark.parametrize("profile", ["expbuild-default", "expbuild-strict"])
@pytest.mark.parametrize("argv", [
    ("unshare", "-n", "true"),
    ("unshare", "-m", "true"),
    ("/bin/busybox", "mount", "-t", "tmpfs", "none", "/mnt"),
    ("/bin/busybox", "chroot", "/", "/bin/true"),
])
def test_namespace_mount_and_chroot_calls_are_refused_even_for_root(profile, argv):
    control = subprocess.run(["unshare", "-m", *argv] if argv[0] != "unshare" else list(argv), capture_output=True)
    assert control.returncode == 0, control.stderr   # positive control: as root, unfiltered, it works
    result = run_under(profile, *argv)
    assert result.returncode != 0
    assert "not permitted" in result.stderr.lower() or "permission denied" in result.stderr.lower()


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers in this test are x86_64's")
def test_strict_also_refuses_linux_aio():
    code = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nctx = ctypes.c_ulong(0)\n"
            "rc = libc.syscall(206, 1, ctypes.byref(ctx))\n"   # io_setup
            "print(ctypes.get_errno() if rc == -1 else 0)\n")
    assert run_under("expbuild-default", sys.executable, "-c", code).stdout.strip() == "0"   # the control
    assert run_under("expbuild-strict", sys.executable, "-c", code).stdout.strip() == str(errno.EPERM)
