"""Build the configured executors, in chain order, from a WorkerConfig."""

from __future__ import annotations

from ..executors.base import TaskExecutor
from .config import BackendName, WorkerConfig


def build_executor(name: BackendName, config: WorkerConfig) -> TaskExecutor:
    """One backend, configured from its section. Imports lazily: docker needs the SDK, namespace needs Linux."""
    section = config.executor
    if name == "host":
        from ..executors.host import HostExecutor
        return HostExecutor(section.host)
    if name == "namespace":
        from ..executors.namespace import NamespaceExecutor
        return NamespaceExecutor(section.namespace)
    if name == "docker":
        from ..executors.docker import DockerExecutor
        return DockerExecutor(section.docker)
    if name == "podman":
        from ..executors.podman import PodmanExecutor
        return PodmanExecutor(section.podman)
    raise ValueError(f"unknown executor {name!r} (known: host, namespace, docker, podman)")


def build_chain(config: WorkerConfig, only: str | None = None) -> list[TaskExecutor]:
    """The executors to try for ``auto`` (or just ``only`` when the task or the CLI names one)."""
    names = config.executor.backends() if only in (None, "auto") else [only]
    return [build_executor(name, config) for name in names]  # type: ignore[arg-type]
