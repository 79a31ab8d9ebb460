"""The seccomp profiles: one source of truth, rendered to OCI JSON and loaded through libseccomp."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from expbuild_isolation.executors import seccomp

REPO = Path(__file__).resolve().parents[2]
LAUNCH = ("import os, sys\nfrom expbuild_isolation.executors.seccomp import load_filter\n"
          "load_filter(sys.argv[1])\nos.execvp(sys.argv[2], sys.argv[2:])\n")


def run_under(profile: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LAUNCH, profile, *argv], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("name", sorted(seccomp.PROFILES))
def test_the_committed_json_is_what_the_code_renders(name):
    committed = (REPO / "manifests" / "seccomp" / f"{name}.json").read_text()
    assert committed == seccomp.render_json(name), (
        "run: python -m expbuild_isolation.executors.seccomp write manifests/seccomp/")


def test_strict_denies_everything_default_denies():
    assert seccomp.PROFILES["expbuild-default"].denied_names() < seccomp.PROFILES["expbuild-strict"].denied_names()


def test_the_oci_profile_has_the_shape_docker_reads():
    profile = seccomp.oci_profile("expbuild-strict")
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    assert "SCMP_ARCH_X86_64" in profile["architectures"]
    clone_rules = [s for s in profile["syscalls"] if s["names"] == ["clone"]]
    assert {rule["args"][0]["value"] for rule in clone_rules} == set(seccomp.NAMESPACE_FLAGS)
    assert all(s["action"] == "SCMP_ACT_ERRNO" and s["errnoRet"] > 0 for s in profile["syscalls"])
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


def test_ordinary_build_tools_run_under_the_default_profile(tmp_path):
    (tmp_path / "a.c").write_text("int main(void){return 0;}\n")
    script = (f"cd {tmp_path} && cc a.c -o a && ./a && make --version >/dev/null && "
              "python3 -c 'import subprocess, threading; subprocess.run([\"true\"], check=True)' && echo ok")
    result = run_under("expbuild-default", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: as root unshare/mount would succeed without the filter")
@pytest.mark.parametrize("argv", [
    ("unshare", "-n", "true"),
    ("unshare", "-m", "true"),
    ("/bin/busybox", "mount", "-t", "tmpfs", "none", "/mnt"),
])
def test_strict_refuses_namespace_and_mount_calls_even_for_root(argv):
    assert subprocess.run(list(argv[:1]) + ["--help"] if argv[0] == "unshare" else ["true"],
                          capture_output=True).returncode == 0
    result = run_under("expbuild-strict", *argv)
    assert result.returncode != 0
    assert "not permitted" in result.stderr.lower() or "permission denied" in result.stderr.lower()


def test_keyctl_and_ptrace_fail_with_eperm_under_strict():
    code = ("import ctypes, ctypes.util, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "res = []\nfor nr in (250, 101):\n"  # keyctl, ptrace on x86_64
            "    rc = libc.syscall(nr, 0, 0, 0, 0)\n    res.append(ctypes.get_errno() if rc == -1 else 0)\n"
            "print(res)\n")
    if os.uname().machine != "x86_64":
        pytest.skip("syscall numbers in this test are x86_64's")
    result = run_under("expbuild-strict", sys.executable, "-c", code)
    assert result.stdout.strip() == "[1, 1]", result.stderr
