"""Hostile tasks, one set for every backend: each attack must fail and leave the host unchanged.

Commands use only /bin/sh and ``/bin/busybox <applet>`` so they run in a
busybox-only image too. Which backend is expected to lose which attack is
declared in ``conftest.EXPECTED``.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from expbuild_isolation.api.task import NetworkMode
from expbuild_isolation.executors.base import TerminationReason

from . import probes
from .conftest import ControlFailed, EscapeSucceeded, hostile, host_address, host_is_responsive, processes_with

BB = "/bin/busybox"
MiB = 1 << 20


@pytest.fixture
def secret(tmp_path):
    """A secret in /root and one in a host temp dir, both outside the workspace."""
    token = f"s3cret-{uuid.uuid4().hex}"
    paths = [Path("/root") / f".expbuild-secret-{uuid.uuid4().hex[:8]}", tmp_path / "secret.txt"]
    for path in paths:
        path.write_text(token)
        path.chmod(0o644)
    yield token, paths
    for path in paths:
        path.unlink(missing_ok=True)


async def test_a_secret_outside_the_workspace_cannot_be_read(backend, workspace, secret):
    token, paths = secret
    script = "; ".join(f"{BB} cat {p}" for p in paths) + f"; {BB} cat /proc/1/root{paths[0]}; true"
    result = await backend.execute(hostile(workspace, script))
    assert token.encode() not in result.stdout + result.stderr
    assert all(p.read_text() == token for p in paths)


async def test_nothing_is_written_outside_the_workspace(backend, workspace, tmp_path):
    tmp_path.chmod(0o777)
    targets = [Path("/root") / f".expbuild-escape-{uuid.uuid4().hex[:8]}", tmp_path / "escape",
               Path("/etc") / f"expbuild-escape-{uuid.uuid4().hex[:8]}", Path("/usr/bin/expbuild-escape")]
    script = "; ".join(f"echo pwned > {t}" for t in targets) + "; echo ok > inside; true"
    try:
        result = await backend.execute(hostile(workspace, script, outputs=("inside",)))
        assert [t for t in targets if t.exists()] == []
        assert [f.path for f in result.output_files] == ["inside"]
    finally:
        for target in targets:
            target.unlink(missing_ok=True)


async def test_a_server_on_the_hosts_loopback_is_unreachable(backend, workspace, tcp_server):
    script = f"echo hi | {BB} nc -w 2 127.0.0.1 {tcp_server.port}; echo rc=$?"
    result = await backend.execute(hostile(workspace, script, network=NetworkMode.LOCALHOST))
    await asyncio.sleep(0.2)
    assert tcp_server.connections == 0, result.stdout


async def test_network_none_reaches_nothing(backend, workspace, tcp_server):
    address = host_address()
    script = (f"echo hi | {BB} nc -w 2 {address} {tcp_server.port}; echo a=$?; "
              f"echo hi | {BB} nc -w 2 127.0.0.1 {tcp_server.port}; echo b=$?")
    result = await backend.execute(hostile(workspace, script, network=NetworkMode.NONE))
    await asyncio.sleep(0.2)
    assert tcp_server.connections == 0, result.stdout


async def test_a_fork_bomb_is_contained(backend, workspace, marker):
    script = f"f(){{ f|f& }}; f; while :; do {BB} sleep 1; done"
    task = asyncio.ensure_future(backend.execute(hostile(workspace, script, marker=marker, pids=64, timeout=5)))
    await asyncio.sleep(2)
    assert await host_is_responsive()
    result = await task
    assert result.reason in {TerminationReason.DEADLINE_EXCEEDED, TerminationReason.PIDS_LIMIT}, result
    assert result.message
    assert processes_with(marker) == []


async def test_allocating_past_the_memory_limit_is_oom_killed(backend, workspace):
    script = f"x=$({BB} head -c 200000000 /dev/zero | {BB} tr '\\0' a); echo allocated ${{#x}}"
    result = await backend.execute(hostile(workspace, script, memory=64 * MiB, timeout=30))
    assert b"allocated" not in result.stdout
    assert result.reason == TerminationReason.OOM_KILLED, result
    assert result.exit_code == 137


async def test_filling_the_disk_stops_at_the_limit(backend, workspace):
    script = (f"{BB} dd if=/dev/zero of=big bs=1048576 count=64 2>&1; echo size=$({BB} wc -c < big); "
              f"{BB} dd if=/dev/zero of=/tmp/big bs=1048576 count=64 2>/dev/null; echo tmp=$({BB} wc -c < /tmp/big)")
    result = await backend.execute(hostile(workspace, script, disk=16 * MiB, outputs=("big",)))
    sizes = {k: int(v) for k, v in re.findall(rb"(size|tmp)=(\d+)", result.stdout)}
    assert sizes.get(b"size") is not None and sizes[b"size"] <= 16 * MiB, result.stdout
    assert sizes.get(b"tmp", 0) <= 16 * MiB
    assert b"No space left" in result.stdout


async def test_a_daemonized_grandchild_does_not_outlive_the_timeout(backend, workspace, marker):
    script = (f"{BB} setsid /bin/sh -c 'while :; do {BB} sleep 1; done' {marker}-daemon & "
              f"{BB} sleep 100")
    result = await backend.execute(hostile(workspace, script, marker=marker, timeout=2))
    assert result.reason == TerminationReason.DEADLINE_EXCEEDED
    assert result.exit_code == 124
    assert processes_with(marker) == []


# probe group -> what the default profile answers every call of it with (syscall_probe's exit status)
SECCOMP_GROUPS = {
    "userns": probes.ALL_EPERM,            # unshare(CLONE_NEWUSER): the door to mounts and netfilter as "root"
    "clone-newuser": probes.ALL_EPERM,     # the same through clone's flags
    "mount-in-userns": probes.ALL_EPERM,   # unshare -r -m; mount -t tmpfs
    "clone3": probes.ALL_ENOSYS,           # so that libc falls back to clone, whose flags the filter reads
    "io_uring": probes.ALL_EPERM,
    "keyring": probes.ALL_EPERM,           # add_key, keyctl
    "ptrace": probes.ALL_EPERM,            # ptrace(ATTACH), process_vm_readv
    "personality": probes.ALL_EPERM,       # ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC
    "userfaultfd": probes.ALL_EPERM,
    "perf": probes.ALL_EPERM,
}


async def unconfined_control(backend, workspace: Path, probe: Path, group: str) -> None:
    """The same probe without a filter must get through, or the attack proves nothing here."""
    control = await backend.execute(hostile(workspace, f"exec ./{probe.name} {group}", seccomp="Unconfined"))
    if control.exit_code != probes.WORKED:
        raise ControlFailed(f"{group} does not work even without a filter here (exit {control.exit_code}): "
                            f"{control.stderr.decode(errors='replace')}")


@pytest.mark.parametrize("group", sorted(SECCOMP_GROUPS))
async def test_default_seccomp_refuses_user_namespaces_and_kernel_attack_surface(backend, workspace, syscall_probe,
                                                                              group):
    shutil.copy(syscall_probe, workspace / syscall_probe.name)
    await unconfined_control(backend, workspace, syscall_probe, group)
    result = await backend.execute(hostile(workspace, f"exec ./{syscall_probe.name} {group}",
                                           seccomp="RuntimeDefault"))
    answer = result.stderr.decode(errors="replace")
    if result.exit_code in (probes.WORKED, probes.MIXED):
        raise EscapeSucceeded(f"{group} went through under RuntimeDefault: {answer}")
    assert result.exit_code == SECCOMP_GROUPS[group], answer


@pytest.fixture
async def setuid_image(backend, suid_probe_on_host):  # type: ignore[no-untyped-def]
    """Where the task finds suid_probe with its bit: the host (host, namespace) or a derived image."""
    if not backend.executor.capabilities().uses_image:
        return ""
    try:
        return await asyncio.to_thread(probes.suid_image, backend.name)
    except probes.ProbeUnavailable as exc:
        raise ControlFailed(str(exc)) from None


async def test_setuid_binaries_do_not_raise_privileges(backend, workspace, setuid_image):
    script = f"{BB} grep NoNewPrivs /proc/self/status >&2; exec {probes.SUID_PROBE}"
    result = await backend.execute(hostile(workspace, script, image=setuid_image))
    answer = result.stderr.decode(errors="replace")
    if result.exit_code == probes.RAISED:
        raise EscapeSucceeded(f"a setuid-root program made the task root: {answer}")
    assert result.exit_code == probes.NOT_RAISED, answer
    assert re.search(r"NoNewPrivs:\s*1", answer), answer


async def test_host_processes_are_invisible(backend, workspace, marker):
    host_proc = subprocess.Popen(["/bin/sh", "-c", f"{BB} sleep 300", marker])
    try:
        script = (f"for f in /proc/[0-9]*/cmdline; do {BB} cat $f; echo; done; "
                  f"{BB} kill -9 {host_proc.pid} 2>/dev/null; true")
        result = await backend.execute(hostile(workspace, script, marker="looker"))
        assert marker.encode() not in result.stdout
        assert host_proc.poll() is None, "the task killed a host process"
    finally:
        host_proc.kill()
        host_proc.wait()


async def test_the_hosts_hostname_is_unchanged(backend, workspace):
    before = socket.gethostname()
    result = await backend.execute(hostile(workspace, f"{BB} hostname evil-{uuid.uuid4().hex[:6]}; {BB} hostname",
                                           run_as_user=None))
    try:
        assert socket.gethostname() == before, result.stdout
    finally:
        if socket.gethostname() != before:
            socket.sethostname(before)


async def test_an_output_symlink_to_etc_shadow_is_refused(backend, workspace):
    script = f"{BB} ln -s /etc/shadow out.txt; {BB} ln -s /etc d; true"
    result = await backend.execute(hostile(workspace, script, outputs=("out.txt", "d/shadow")))
    assert result.output_files == ()
    assert len(result.output_problems) == 2
    assert all("symlink" in problem for problem in result.output_problems), result.output_problems
