"""Hostile tasks, one set for every backend: each attack must fail and leave the host unchanged.

Commands use only /bin/sh and ``/bin/busybox <applet>`` so they run in a
busybox-only image too. Which backend is expected to lose which attack is
declared in ``conftest.EXPECTED``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
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
def secret():
    """A secret in /root and one any user of this host may read (/tmp/<dir 0755>/secret.txt), both outside the
    workspace: a backend that shares the host's files (host, even as nobody) reads the second."""
    token = f"s3cret-{uuid.uuid4().hex}"
    shared = Path(tempfile.mkdtemp(prefix="expbuild-secret-"))
    shared.chmod(0o755)
    paths = [Path("/root") / f".expbuild-secret-{uuid.uuid4().hex[:8]}", shared / "secret.txt"]
    for path in paths:
        path.write_text(token)
        path.chmod(0o644)
    yield token, paths
    paths[0].unlink(missing_ok=True)
    shutil.rmtree(shared)


async def test_a_secret_outside_the_workspace_cannot_be_read(backend, workspace, secret):
    token, paths = secret
    control = f"readable-{uuid.uuid4().hex}"
    (workspace / "control.txt").write_text(control)       # the same cat must read what the task may read
    (workspace / "control.txt").chmod(0o644)
    script = f"{BB} cat control.txt; " + "; ".join(f"{BB} cat {p}" for p in paths) + \
        f"; {BB} cat /proc/1/root{paths[0]}; true"
    result = await backend.execute(hostile(workspace, script))
    assert control.encode() in result.stdout, result      # the positive control: a missing cat cannot pass
    assert token.encode() not in result.stdout + result.stderr
    assert all(p.read_text() == token for p in paths)


async def test_nothing_is_written_outside_the_workspace(backend, workspace):
    # One target any user of this host may write (a 1777 directory in /tmp): a backend sharing the host's
    # files writes it whatever user it runs the task as.
    shared = Path(tempfile.mkdtemp(prefix="expbuild-escape-"))
    shared.chmod(0o1777)
    targets = [Path("/root") / f".expbuild-escape-{uuid.uuid4().hex[:8]}", shared / "escape",
               Path("/etc") / f"expbuild-escape-{uuid.uuid4().hex[:8]}", Path("/usr/bin/expbuild-escape")]
    script = "; ".join(f"echo pwned > {t}" for t in targets) + "; echo ok > inside; true"
    try:
        result = await backend.execute(hostile(workspace, script, outputs=("inside",)))
        assert [t for t in targets if t.exists()] == []
        assert [f.path for f in result.output_files] == ["inside"]
    finally:
        for target in targets:
            target.unlink(missing_ok=True)
        shutil.rmtree(shared, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def nc_round_trip(port: int, word: str) -> str:
    """Shell: a listener on the sandbox's own loopback writes what it gets to ``got`` in the workspace, and
    the probe's nc sends ``word`` to it: the positive control that nc works and reaches what it may.

    The listener's stdin is held open (a background job's is /dev/null: busybox nc then half-closes at once
    and a client seeing that EOF quits before sending); the client retries until the listener is up. The
    sleep feeding the listener ends with the task."""
    return (f"({BB} sleep 60 | {BB} nc -l -p {port} > got 2> listener.err) & i=0; "
            f"while [ ! -s got ] && [ $i -lt 100 ]; do "
            f"echo {word} | {BB} nc -w 1 127.0.0.1 {port}; {BB} sleep 0.1; i=$((i+1)); done; echo tries=$i; ")


def reached_from_the_host(server, address: str) -> None:  # type: ignore[no-untyped-def]
    """The server really counts connections (the other positive control): one from the host itself."""
    socket.create_connection((address, server.port), timeout=2).close()
    for _ in range(50):
        if server.connections:
            break
        time.sleep(0.02)
    assert server.connections == 1


async def test_a_server_on_the_hosts_loopback_is_unreachable(backend, workspace, tcp_server, marker):
    reached_from_the_host(tcp_server, "127.0.0.1")
    script = nc_round_trip(free_port(), marker) + f"echo hi | {BB} nc -w 2 127.0.0.1 {tcp_server.port}; echo rc=$?"
    result = await backend.execute(hostile(workspace, script, network=NetworkMode.LOCALHOST))
    await asyncio.sleep(0.2)
    assert (workspace / "got").read_text() == f"{marker}\n", (result.stdout, (workspace / "listener.err").read_text())
    assert tcp_server.connections == 1, result.stdout


async def test_network_none_reaches_nothing(backend, workspace, tcp_server, marker):
    address = host_address()
    reached_from_the_host(tcp_server, address)
    control = await backend.execute(hostile(workspace, nc_round_trip(free_port(), marker),
                                            network=NetworkMode.LOCALHOST))
    assert (workspace / "got").read_text() == f"{marker}\n", (control.stdout, (workspace / "listener.err").read_text())
    script = (f"echo hi | {BB} nc -w 2 {address} {tcp_server.port}; echo a=$?; "
              f"echo hi | {BB} nc -w 2 127.0.0.1 {tcp_server.port}; echo b=$?")
    result = await backend.execute(hostile(workspace, script, network=NetworkMode.NONE))
    await asyncio.sleep(0.2)
    assert tcp_server.connections == 1, result.stdout


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
