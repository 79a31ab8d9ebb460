"""The escape suite's fixtures: every backend by name, a hostile-request builder, host probes.

A backend that cannot run here is skipped with the reason -- unless
EXPBUILD_REQUIRE_BACKENDS (comma list) names it, in which case the suite fails,
so CI cannot pass by skipping everything.

The attacks ``expbuild-isolation selftest`` runs live in the package
(``expbuild_isolation.selftest``, with their host-side judges and controls); a
backend is expected to lose one of them when its ``capabilities()`` do not claim
to stop it (``Attack.unclaimed``), and it is not run where that would harm the
machine. For the suite's own attacks, expectations live in ONE table,
``EXPECTED``: (backend, attack) -> why that backend is expected to lose, or
``Skip(...)`` when running the attack there would harm the machine. Either way
a loss is a strict xfail (an unexpected pass is reported), and only a failed
assertion or ``AttackSucceeded`` counts as the loss: a crash, a missing tool or
a positive control that did not work (``ControlFailed``) fails the test
everywhere.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from expbuild_isolation.executors.base import (ExecutionRequest, ExecutionResult, ExecutorCapabilities,
                                               ExecutorUnavailable, IsolationUnavailable)
from expbuild_isolation.executors.workspace import create_workspace, remove_workspace
from expbuild_isolation.selftest.attack import Attack, AttackSucceeded, ControlFailed
from expbuild_isolation.selftest.host_side import TcpServer
from expbuild_isolation.worker.chain import build_executor
from expbuild_isolation.worker.config import WorkerConfig

from . import probes

BACKENDS = ["host", "namespace", "docker", "podman"]


@dataclass(frozen=True)
class Skip:
    reason: str


_HOST_SHARES = "the host executor runs on the host: Process isolation, no namespaces"
# The suite's own attacks only; the selftest's follow from capabilities() (Attack.unclaimed).
EXPECTED: dict[tuple[str, str], str | Skip] = {
    ("host", "network_none"): _HOST_SHARES + " (shares the network)",
    ("host", "disk"): _HOST_SHARES + " (no disk limit)",
    ("host", "default_seccomp"): _HOST_SHARES + " (no seccomp)",
    ("host", "setuid"): _HOST_SHARES + " (runs as runAsUser, but without no_new_privs a setuid binary raises it)",
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
    expectation = expectation_for(name, executor, request.node)
    if isinstance(expectation, Skip):
        pytest.skip(expectation.reason)
    if expectation is not None:
        request.node.add_marker(pytest.mark.xfail(reason=expectation, strict=True,
                                                  raises=(AssertionError, AttackSucceeded)))
    return Backend(executor)


def expectation_for(name: str, executor, test) -> str | Skip | None:  # type: ignore[no-untyped-def]
    """Why ``executor`` may lose the attack of ``test`` (a Skip: it must not be attacked; None: it must win)."""
    shared = getattr(test, "callspec", None) and test.callspec.params.get("attack")
    if isinstance(shared, Attack):
        return expectation(name, shared.key, executor.capabilities(), shared)
    attack = test.originalname.removeprefix("test_").split("__")[0]
    return expectation(name, ATTACK_NAMES.get(attack, attack), executor.capabilities())


def expectation(backend: str, key: str, caps: ExecutorCapabilities, shared: Attack | None = None) -> str | Skip | None:
    """A selftest attack (``shared``): from what ``caps`` claim; the suite's own: from EXPECTED."""
    if shared is None:
        return EXPECTED.get((backend, key))
    why = shared.unclaimed(caps)
    return Skip(why) if why and shared.harmful_unclaimed else why


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


# test function name (without test_) -> attack key in EXPECTED (the suite's own attacks)
ATTACK_NAMES = {
    "network_none_reaches_nothing": "network_none",
    "filling_the_disk_stops_at_the_limit": "disk",
    "a_sparse_file_leaves_no_more_than_the_limit_on_the_host": "sparse_disk",
    "a_workspace_symlink_is_never_written_through": "workspace_symlink",
    "default_seccomp_refuses_user_namespaces_and_kernel_attack_surface": "default_seccomp",
    "setuid_binaries_do_not_raise_privileges": "setuid",
    "the_hosts_hostname_is_unchanged": "hostname",
}
# the test that runs every attack of the selftest's list (expbuild_isolation.selftest.catalog.ATTACKS)
SHARED_TEST = "test_each_selftest_attack_is_stopped"


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


@pytest.fixture
def tcp_server():
    server = TcpServer("0.0.0.0")
    yield server
    server.close()
