"""Selection never goes below the task's isolation floor and says what was missing."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from expbuild_isolation.api.task import IsolationLevel, NetworkMode
from expbuild_isolation.executors.base import (
    ExecutionRequest, ExecutorCapabilities, ExecutorUnavailable, IsolationUnavailable, NetworkPolicy, ResourceLimits,
)
from expbuild_isolation.executors.host import HostExecutor
from expbuild_isolation.executors.select import select_executor, unmet_requirements
from expbuild_isolation.worker.chain import MissingBackend


@dataclass
class Backend:
    """A backend that is healthy or not, as the test says; selection reads only these answers."""

    name: str
    caps: ExecutorCapabilities
    healthy: bool = True
    checked: list = field(default_factory=list)

    def capabilities(self):
        return self.caps

    def isolation_level(self):
        return self.caps.isolation_level

    async def health_check(self):
        self.checked.append(True)
        if not self.healthy:
            raise ExecutorUnavailable("daemon is down")


CONTAINER = ExecutorCapabilities(
    isolation_level=IsolationLevel.CONTAINER, supports_cpu_limit=True, supports_memory_limit=True,
    supports_pids_limit=True, network_policies=frozenset({NetworkMode.NONE, NetworkMode.LOCALHOST}),
    seccomp_profiles=frozenset({"RuntimeDefault", "expbuild-strict"}))


def req(minimum=IsolationLevel.CONTAINER, **limits):
    network = limits.pop("network", NetworkPolicy.none())
    return ExecutionRequest(task_id="t", argv=("true",), workspace=Path("/tmp"), minimum_isolation=minimum,
                            limits=ResourceLimits(network=network, **limits), seccomp_profile=limits.pop("seccomp", "RuntimeDefault"))


async def test_first_healthy_backend_that_qualifies_wins():
    down = Backend("docker", CONTAINER, healthy=False)
    up = Backend("namespace", CONTAINER)
    assert await select_executor([down, up], req()) is up


async def test_host_is_never_picked_for_a_container_floor_even_when_everything_else_is_down():
    chain = [Backend("docker", CONTAINER, healthy=False), HostExecutor()]
    with pytest.raises(IsolationUnavailable) as caught:
        await select_executor(chain, req())
    message = str(caught.value)
    assert "docker: unavailable (daemon is down)" in message
    assert "host: isolation Process is below the task's minimum Container" in message


async def test_host_fallback_is_allowed_when_the_floor_is_none():
    host = HostExecutor()
    chain = [Backend("docker", CONTAINER, healthy=False), host]
    request = ExecutionRequest(task_id="t", argv=("true",), workspace=Path("/tmp"),
                               minimum_isolation=IsolationLevel.NONE, seccomp_profile="Unconfined",
                               limits=ResourceLimits(network=NetworkPolicy.full()))
    assert await select_executor(chain, request) is host


@pytest.mark.parametrize("limits, missing", [
    ({"disk_bytes": 1 << 30}, "cannot enforce a disk limit"),
    ({"network": NetworkPolicy(NetworkMode.RESTRICTED, ("10.0.0.0/8",))}, "network policy Restricted"),
    ({"network": NetworkPolicy.full()}, "network policy Full"),
])
def test_unmet_limits_are_named(limits, missing):
    problems = unmet_requirements(CONTAINER, req(**limits))
    assert any(missing in p for p in problems), problems


def test_a_floor_above_the_backend_is_named():
    assert unmet_requirements(CONTAINER, req(IsolationLevel.VM)) == [
        "isolation Container is below the task's minimum VM"]


async def test_unqualified_backends_are_not_even_health_checked():
    weak = Backend("host", ExecutorCapabilities(isolation_level=IsolationLevel.PROCESS))
    with pytest.raises(IsolationUnavailable):
        await select_executor([weak], req())
    assert weak.checked == []


async def test_a_backend_that_cannot_be_built_is_reported_not_crashed_on():
    with pytest.raises(IsolationUnavailable, match="podman: unavailable \\(no socket\\)"):
        await select_executor([MissingBackend("podman", "no socket")], req(IsolationLevel.NONE))


async def test_empty_chain_is_a_clear_error():
    with pytest.raises(IsolationUnavailable, match="no executor is configured"):
        await select_executor([], req())
