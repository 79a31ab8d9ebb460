"""Hostile tasks, one set for every backend: each attack must fail and leave the host unchanged.

Commands use only /bin/sh and ``/bin/busybox <applet>`` so they run in a
busybox-only image too. The attacks ``expbuild-isolation selftest`` runs come
from the package (``expbuild_isolation.selftest.catalog.ATTACKS``, judges and
controls included) and run here through one parametrized test; a backend is
expected to lose one of them where its ``capabilities()`` do not claim to stop
it. The heavier or test-only attacks below (compiled probes, a setuid image,
disk limits, renaming the host) stay here, with their expected losses in
``conftest.EXPECTED``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import stat
import uuid
from pathlib import Path

import pytest

from expbuild_isolation.api.task import NetworkMode
from expbuild_isolation.executors.base import IsolationUnavailable
from expbuild_isolation.selftest.attack import AttackSucceeded, ControlFailed, hostile
from expbuild_isolation.selftest.catalog import ATTACKS
from expbuild_isolation.selftest.host_side import free_port, host_address, processes_with
from expbuild_isolation.selftest.network import nc_round_trip, round_trip_arrived

from . import probes

BB = "/bin/busybox"
MiB = 1 << 20


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda attack: attack.key)
async def test_each_selftest_attack_is_stopped(backend, attack):
    """Each attack makes its own workspace and bait, runs its positive control and judges from the host."""
    try:
        await attack.run(backend.executor)
    except IsolationUnavailable as exc:
        pytest.skip(f"{backend.name} refuses this task up front (selection would too): {exc}")


async def test_network_none_reaches_nothing(backend, workspace, tcp_server, marker):
    address = host_address()
    tcp_server.reached_from(address)
    control = await backend.execute(hostile(workspace, nc_round_trip(free_port(), marker),
                                            network=NetworkMode.LOCALHOST))
    round_trip_arrived(workspace, marker, control.stdout)
    script = (f"echo hi | {BB} nc -w 2 {address} {tcp_server.port}; echo a=$?; "
              f"echo hi | {BB} nc -w 2 127.0.0.1 {tcp_server.port}; echo b=$?")
    result = await backend.execute(hostile(workspace, script, network=NetworkMode.NONE))
    await asyncio.sleep(0.2)
    assert tcp_server.connections == 1, result.stdout


async def test_filling_the_disk_stops_at_the_limit(backend, workspace, marker):
    """Measured from the host while the task waits: its /tmp and its workspace (through /proc/<pid>/root and
    /proc/<pid>/cwd, whatever the backend), then the workspace the task leaves behind."""
    tmp_file = f"/tmp/{marker}-big"
    script = (f"{BB} dd if=/dev/zero of={tmp_file} bs=1048576 count=64 2>/dev/null; "
              f"{BB} dd if=/dev/zero of=big bs=1048576 count=64 2>/dev/null; "
              f": > filled; while [ ! -e measured ]; do {BB} sleep 0.1; done")
    task = asyncio.ensure_future(backend.execute(hostile(workspace, script, marker=marker, disk=16 * MiB,
                                                         outputs=("big",), timeout=60)))
    try:
        seen = await task_files_seen_from_the_host(marker, "filled", {"tmp": f"root{tmp_file}", "ws": "cwd/big"})
    finally:
        result = await task
    assert seen["tmp"].st_size > 1 * MiB, seen                   # the task did write (a missing dd cannot pass)
    assert seen["tmp"].st_size + seen["ws"].st_size <= 16 * MiB, seen
    assert 0 < (workspace / "big").stat().st_size <= 16 * MiB or seen["ws"].st_size == 0
    assert disk_use(workspace) <= 16 * MiB
    assert [f.size_bytes for f in result.output_files if f.path == "big"] in ([], [seen["ws"].st_size])


async def task_files_seen_from_the_host(marker: str, ready: str, files: dict[str, str]) -> dict[str, os.stat_result]:
    """lstat ``files`` (paths under /proc/<pid>/: ``root/...`` or ``cwd/...``) of the task's shell once it
    has made ``ready`` in its working directory; then tell it to go on (it waits for ``measured``)."""
    for _ in range(400):
        for pid in processes_with(marker):
            proc = Path(f"/proc/{pid}")
            try:
                if (proc / "cwd" / ready).exists():
                    seen = {name: os.lstat(proc / path) for name, path in files.items()}
                    (proc / "cwd" / "measured").touch()
                    for path in files.values():   # a host backend's /tmp is the host's: leave nothing there
                        if path.startswith("root/tmp/"):
                            (proc / path).unlink(missing_ok=True)
                    return seen
            except OSError:
                continue
        await asyncio.sleep(0.05)
    raise AssertionError(f"the task never made {ready!r} (is it running?)")


def disk_use(workspace: Path) -> int:
    """Bytes of real blocks under ``workspace``, walked on the host without following links (du)."""
    total = 0
    for directory, dirs, files in os.walk(workspace):
        for name in dirs + files:
            total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total


async def test_a_sparse_file_leaves_no_more_than_the_limit_on_the_host(backend, workspace):
    script = f"{BB} truncate -s 200M sparse && {BB} dd if=/dev/zero of=dense bs=1048576 count=4 2>/dev/null; true"
    await backend.execute(hostile(workspace, script, disk=16 * MiB))
    assert (workspace / "sparse").stat().st_size == 200 * MiB     # the task did make it
    assert (workspace / "dense").stat().st_size == 4 * MiB
    assert disk_use(workspace) <= 16 * MiB


@pytest.fixture
def host_victims(tmp_path):
    """A root-only directory on the host holding a root 0600 file, reached from the workspace by symlinks."""
    directory = tmp_path / "host-dir"
    directory.mkdir(mode=0o700)
    victim = directory / "victim"
    victim.write_text("host data")
    victim.chmod(0o600)
    yield directory, victim


async def test_a_workspace_symlink_is_never_written_through(backend, workspace, host_victims):
    """A workspace may hold links to anywhere (REAPI inputs); the task replaces them with its own files and
    directories, a setuid one included. Nothing may reach the link's target on the host."""
    directory, victim = host_victims
    os.symlink(victim, workspace / "flink")
    os.symlink(directory, workspace / "dlink")
    script = (f"{BB} rm flink dlink && echo pwned > flink && {BB} mkdir dlink && echo pwned > dlink/victim && "
              f"{BB} cp {BB} dlink/suid && {BB} chmod 4755 dlink/suid && echo pwned > dlink/new && echo replaced")
    result = await backend.execute(hostile(workspace, script, disk=16 * MiB))
    assert victim.read_text() == "host data" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == ["victim"]
    assert b"replaced" in result.stdout, result                   # the task really did replace both links


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
        raise AttackSucceeded(f"{group} went through under RuntimeDefault: {answer}")
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
        raise AttackSucceeded(f"a setuid-root program made the task root: {answer}")
    assert result.exit_code == probes.NOT_RAISED, answer
    assert re.search(r"NoNewPrivs:\s*1", answer), answer


async def test_the_hosts_hostname_is_unchanged(backend, workspace):
    before = socket.gethostname()
    result = await backend.execute(hostile(workspace, f"{BB} hostname evil-{uuid.uuid4().hex[:6]}; {BB} hostname",
                                           run_as_user=None))
    try:
        assert socket.gethostname() == before, result.stdout
    finally:
        if socket.gethostname() != before:
            socket.sethostname(before)
