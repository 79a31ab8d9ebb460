"""The escape suite's fixtures: every backend by name, a hostile-request builder, host probes.

A backend that cannot run here is skipped with the reason -- unless
EXPBUILD_REQUIRE_BACKENDS (comma list) names it, in which case the suite fails,
so CI cannot pass by skipping everything.

Expectations live in ONE table, ``EXPECTED``: (backend, attack) -> why that
backend is expected to lose (strict xfail: an unexpected pass is reported), or
``Skip(...)`` when running the attack there would harm the machine. Only a
failed assertion counts as the expected loss (``raises=AssertionError``; attacks
judged by a probe raise ``EscapeSucceeded``, one): a crash, a missing tool or a
positive control that did not work (``ControlFailed``) fails the test everywhere.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from expbuild_isolation.api.task import IsolationLevel, NetworkMode
from expbuild_isolation.executors.base import (ExecutionRequest, ExecutionResult, ExecutorUnavailable,
                                               IsolationUnavailable, NetworkPolicy, ResourceLimits)
from expbuild_isolation.executors.workspace import create_workspace, remove_workspace
from expbuild_isolation.worker.chain import build_executor
from expbuild_isolation.worker.config import WorkerConfig

from . import probes

BACKENDS = ["host", "namespace", "docker", "podman"]


@dataclass(frozen=True)
class Skip:
    reason: str


class EscapeSucceeded(AssertionError):
    """The kernel let the attack through (judged from the host side)."""


class ControlFailed(Exception):
    """The positive control did not work, so the attack cannot be judged: never an expected loss."""


_HOST_SHARES = "the host executor runs on the host: Process isolation, no namespaces"
EXPECTED: dict[tuple[str, str], str | Skip] = {
    ("host", "secret_read"): _HOST_SHARES + " (shares the filesystem: it reads what any user may, even as nobody)",
    ("host", "write_outside"): _HOST_SHARES + " (shares the filesystem: it writes where any user may, even as nobody)",
    ("host", "tcp_to_host"): _HOST_SHARES + " (shares the network)",
    ("host", "network_none"): _HOST_SHARES + " (shares the network)",
    ("host", "fork_bomb"): Skip("the host executor has no pids limit; a fork bomb would take the machine down"),
    ("host", "memory"): _HOST_SHARES + " (no memory limit)",
    ("host", "disk"): _HOST_SHARES + " (no disk limit)",
    ("host", "default_seccomp"): _HOST_SHARES + " (no seccomp)",
    ("host", "setuid"): _HOST_SHARES + " (runs as runAsUser, but without no_new_privs a setuid binary raises it)",
    ("host", "host_processes"): _HOST_SHARES + " (shares the PID namespace)",
    ("host", "hostname"): Skip("the host executor shares the UTS namespace; the attack would rename this machine"),
}


def required_backends() -> set[str]:
    return {b.strip() for b in os.environ.get("EXPBUILD_REQUIRE_BACKENDS", "").split(",") if b.strip()}


def _unavailable(name: str, reason: str) -> None:
    if name in required_backends():
        pytest.fail(f"backend {name} is required (EXPBUILD_REQUIRE_BACKENDS) but unavailable: {reason}")
    pytest.skip(f"backend {name} unavailable: {reason}")


@pytest.fixture(params=BACKENDS)
async def backend(request):
    name = request.param
    try:
        executor = build_executor(name, WorkerConfig())
    except ImportError as exc:
        _unavailable(name, f"cannot import: {exc}")
    except ExecutorUnavailable as exc:
        _unavailable(name, str(exc))
    try:
        await executor.health_check()
        await executor.warmup()
    except ExecutorUnavailable as exc:
        _unavailable(name, str(exc))
    attack = request.node.originalname.removeprefix("test_").split("__")[0]
    expectation = EXPECTED.get((name, ATTACK_NAMES.get(attack, attack)))
    if isinstance(expectation, Skip):
        pytest.skip(expectation.reason)
    if expectation is not None:
        request.node.add_marker(pytest.mark.xfail(reason=expectation, strict=True, raises=AssertionError))
    return Backend(executor)


class Backend:
    """The executor under attack; a task it refuses up front (a limit it does not claim) is skipped, not run."""

    def __init__(self, executor) -> None:  # type: ignore[no-untyped-def]
        self.executor = executor
        self.name = executor.name

    async def execute(self, request: ExecutionRequest) -> ExecutionResult:
        try:
            return await self.executor.execute(request)
        except IsolationUnavailable as exc:
            pytest.skip(f"{self.name} refuses this task up front (selection would too): {exc}")


# test function name (without test_) -> attack key in EXPECTED
ATTACK_NAMES = {
    "a_secret_outside_the_workspace_cannot_be_read": "secret_read",
    "nothing_is_written_outside_the_workspace": "write_outside",
    "a_server_on_the_hosts_loopback_is_unreachable": "tcp_to_host",
    "network_none_reaches_nothing": "network_none",
    "a_fork_bomb_is_contained": "fork_bomb",
    "allocating_past_the_memory_limit_is_oom_killed": "memory",
    "filling_the_disk_stops_at_the_limit": "disk",
    "a_sparse_file_leaves_no_more_than_the_limit_on_the_host": "sparse_disk",
    "a_workspace_symlink_is_never_written_through": "workspace_symlink",
    "a_daemonized_grandchild_does_not_outlive_the_timeout": "daemon",
    "default_seccomp_refuses_user_namespaces_and_kernel_attack_surface": "default_seccomp",
    "setuid_binaries_do_not_raise_privileges": "setuid",
    "host_processes_are_invisible": "host_processes",
    "the_hosts_hostname_is_unchanged": "hostname",
    "an_output_symlink_to_etc_shadow_is_refused": "symlink_output",
}


@pytest.fixture
def workspace():
    path = create_workspace()
    os.chmod(path, 0o755)
    yield path
    remove_workspace(path)


def _probe_unavailable(reason: str) -> None:
    if required_backends():
        pytest.fail(f"the escape suite's probes are required here (EXPBUILD_REQUIRE_BACKENDS): {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def syscall_probe() -> Path:
    """The static syscall_probe (see probes/); copy it into a workspace to run it."""
    try:
        return probes.build("syscall_probe")
    except probes.ProbeUnavailable as exc:
        _probe_unavailable(str(exc))


@pytest.fixture(scope="session")
def suid_probe_on_host():
    """suid_probe installed setuid root on the host, checked to raise a caller to euid 0 there."""
    try:
        path = probes.install_suid_probe()
    except probes.ProbeUnavailable as exc:
        _probe_unavailable(str(exc))
    try:
        control = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(path)],
                                 capture_output=True, text=True)
        if control.returncode != probes.RAISED:
            raise ControlFailed(f"{path} does not raise nobody to root on the host: {control.stderr.strip()}")
        yield path
    finally:
        probes.remove_suid_probe()


@pytest.fixture
def marker() -> str:
    return f"expbuild-marker-{uuid.uuid4().hex[:12]}"


def hostile(workspace: Path, script: str, *, marker: str = "hostile", timeout: float = 20.0,
            memory: int | None = None, pids: int | None = None, disk: int | None = None,
            network: NetworkMode = NetworkMode.NONE, seccomp: str = "RuntimeDefault",
            outputs: tuple[str, ...] = (), run_as_user: int | None = 65534, image: str = "") -> ExecutionRequest:
    """A request running ``script`` under /bin/sh; ``marker`` is $0, so it is in every shell's cmdline."""
    return ExecutionRequest(
        task_id=f"escape-{uuid.uuid4().hex[:8]}", argv=("/bin/sh", "-c", script, marker), workspace=workspace,
        image=image,
        output_paths=outputs, timeout_seconds=timeout, seccomp_profile=seccomp, run_as_user=run_as_user,
        limits=ResourceLimits(memory_bytes=memory, max_processes=pids, disk_bytes=disk,
                              network=NetworkPolicy(network)),
        minimum_isolation=IsolationLevel.NONE)


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class TcpServer:
    """Counts connections to a listening socket on the host."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def tcp_server():
    server = TcpServer("0.0.0.0")
    yield server
    server.close()


def host_address() -> str:
    """An address of this host that is not loopback (for "network None reaches nothing")."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))   # TEST-NET: nothing is sent, only a route is chosen
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


async def host_is_responsive(limit_seconds: float = 3.0) -> bool:
    loop = asyncio.get_running_loop()
    start = loop.time()
    proc = await asyncio.create_subprocess_exec("/bin/true")
    await proc.wait()
    return loop.time() - start < limit_seconds
