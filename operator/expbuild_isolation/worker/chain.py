"""Build the configured executors, in chain order, from a WorkerConfig."""

from __future__ import annotations

from ..api.task import IsolationLevel, NetworkMode
from ..executors.base import (
    ExecutionRequest, ExecutionResult, ExecutorCapabilities, ExecutorError, ExecutorUnavailable, TaskExecutor,
)
from .config import BackendName, WorkerConfig


def build_executor(name: BackendName, config: WorkerConfig) -> TaskExecutor:
    """One backend, configured from its section. Imports lazily: docker needs the SDK, namespace needs Linux."""
    section = config.executor
    if name == "host":
        from ..executors.host import HostExecutor
        return HostExecutor(section.host)
    if name == "namespace":
        from ..executors.namespace.executor import NamespaceExecutor
        return NamespaceExecutor(section.namespace)
    if name == "docker":
        from ..executors.containers.docker import DockerExecutor
        return DockerExecutor(section.docker)
    if name == "podman":
        from ..executors.containers.podman import PodmanExecutor
        return PodmanExecutor(section.podman)
    raise ValueError(f"unknown executor {name!r} (known: host, namespace, docker, podman)")


class MissingBackend:
    """Stands in the chain for a backend that cannot even be constructed here; always unhealthy, says why."""

    def __init__(self, name: str, why: str) -> None:
        self.name, self.why = name, why

    def isolation_level(self) -> IsolationLevel:
        return IsolationLevel.NONE

    def capabilities(self) -> ExecutorCapabilities:
        # Claims everything so that selection reaches health_check() and reports the real reason.
        return ExecutorCapabilities(
            isolation_level=IsolationLevel.VM, supports_cpu_limit=True, supports_memory_limit=True,
            supports_disk_limit=True, supports_pids_limit=True, network_policies=frozenset(NetworkMode),
            supports_readonly_rootfs=True, seccomp_profiles=frozenset({"RuntimeDefault", "expbuild-default",
                                                                       "expbuild-strict", "Unconfined", "Localhost/*"}))

    async def health_check(self) -> None:
        raise ExecutorUnavailable(self.why)

    async def warmup(self) -> None:
        raise ExecutorUnavailable(self.why)

    async def execute(self, request: ExecutionRequest) -> ExecutionResult:
        raise ExecutorUnavailable(self.why)


LOCAL_BACKENDS = ("host", "namespace", "docker", "podman")


def build_chain(config: WorkerConfig, only: str | None = None) -> list[TaskExecutor]:
    """The executors to try for ``auto`` (or just ``only`` when the task or the CLI names one).

    A backend that cannot be built (module or SDK missing, bad socket URL) stays in the chain
    as an unhealthy MissingBackend, so selection reports why it was skipped.
    """
    names = config.executor.backends() if only in (None, "auto") else [only]
    chain: list[TaskExecutor] = []
    for name in names:
        if name not in LOCAL_BACKENDS:
            chain.append(MissingBackend(name, f"{name!r} runs only in a Kubernetes cluster; locally use one of "
                                              f"auto, {', '.join(LOCAL_BACKENDS)}"))
            continue
        try:
            chain.append(build_executor(name, config))  # type: ignore[arg-type]
        except (ImportError, ExecutorError, OSError, ValueError) as exc:
            chain.append(MissingBackend(name, f"cannot be set up here: {exc}"))
    return chain
