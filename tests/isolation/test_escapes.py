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
import time
import uuid
from pathlib import Path

import pytest

from expbuild_isolation.api.task import NetworkMode
from expbuild_isolation.executors.base import TerminationReason

from .conftest import hostile, host_address, host_is_responsive, processes_with

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
    control = f"readable-{uuid.uuid4().hex}"
    (workspace / "control.txt").write_text(control)       # the same cat must read what the task may read
    (workspace / "control.txt").chmod(0o644)
    script = f"{BB} cat control.txt; " + "; ".join(f"{BB} cat {p}" for p in paths) + \
        f"; {BB} cat /proc/1/root{paths[0]}; true"
    result = await backend.execute(hostile(workspace, script))
    assert control.encode() in result.stdout, result      # the positive control: a missing cat cannot pass
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


async def test_strict_seccomp_refuses_namespaces_mounts_ptrace_keyctl(backend, workspace):
    python_probe = ("import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
                    "r = [libc.syscall(n, 0, 0, 0, 0) == -1 and ctypes.get_errno() for n in (250, 101)]; "
                    "print('probe', r)")
    script = (f"{BB} unshare -r -n {BB} true && echo unshared; "
              f"{BB} unshare -r -m {BB} mount -t tmpfs none /tmp && echo mounted; "
              f"if [ -x /usr/bin/python3 ] && [ \"$({BB} uname -m)\" = x86_64 ]; then "
              f"/usr/bin/python3 -c \"{python_probe}\"; fi; true")
    result = await backend.execute(hostile(workspace, script, seccomp="expbuild-strict"))
    assert b"unshared" not in result.stdout and b"mounted" not in result.stdout, result.stdout
    assert b"Operation not permitted" in result.stderr or b"not permitted" in result.stderr.lower()
    if b"probe" in result.stdout:
        assert b"probe [1, 1]" in result.stdout   # keyctl and ptrace: EPERM


@pytest.fixture
def setuid_probe(workspace):
    """A root-owned setuid program in the workspace that prints its effective uid."""
    source = workspace / "probe.c"
    source.write_text('#include <stdio.h>\n#include <unistd.h>\n'
                      'int main(void){printf("euid=%d\\n",(int)geteuid());return 0;}\n')
    target = workspace / "suid-probe"
    if shutil.which("cc") and subprocess.run(["cc", "-static", "-O", "-o", str(target), str(source)]).returncode == 0:
        pass
    else:
        shutil.copy("/bin/busybox", target)
    source.unlink()
    os.chown(target, 0, 0)
    target.chmod(0o4755)
    assert target.stat().st_mode & stat.S_ISUID
    return target


async def test_setuid_binaries_do_not_raise_privileges(backend, workspace, setuid_probe):
    script = f"{BB} grep NoNewPrivs /proc/self/status; ./{setuid_probe.name} id -u; {BB} id -u"
    result = await backend.execute(hostile(workspace, script))
    assert re.search(rb"NoNewPrivs:\s*1", result.stdout), result.stdout
    assert b"euid=0" not in result.stdout
    assert not re.search(rb"^0$", result.stdout, re.M)


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
