"""Choose a backend for a request: walk the chain, never go below the isolation floor.

The seed allowed "fall back to the host when Docker is down"; here that happens
only when the task itself accepts isolation None or Process, because every
candidate is checked against the task's floor and limits before it is used.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..api.task import NetworkMode
from .base import ExecutionRequest, ExecutorCapabilities, ExecutorUnavailable, IsolationUnavailable, TaskExecutor


def unmet_requirements(caps: ExecutorCapabilities, request: ExecutionRequest) -> list[str]:
    """What ``request`` asks for that a backend with ``caps`` cannot enforce (empty: it can run it)."""
    missing: list[str] = []
    if caps.isolation_level < request.minimum_isolation:
        missing.append(f"isolation {caps.isolation_level.value} is below the task's minimum "
                       f"{request.minimum_isolation.value}")
    limits = request.limits
    if limits.cpu_cores is not None and not caps.supports_cpu_limit:
        missing.append("cannot enforce a cpu limit")
    if limits.memory_bytes is not None and not caps.supports_memory_limit:
        missing.append("cannot enforce a memory limit")
    if limits.disk_bytes is not None and not caps.supports_disk_limit:
        missing.append("cannot enforce a disk limit")
    if limits.max_processes is not None and not caps.supports_pids_limit:
        missing.append("cannot enforce a pids limit")
    if limits.network.mode not in caps.network_policies:
        offered = ", ".join(sorted(m.value for m in caps.network_policies)) or "none"
        missing.append(f"cannot enforce network policy {limits.network.mode.value} (offers {offered})")
    if request.run_as_user == 0 and not caps.runs_as_root:
        missing.append("never runs a task as root (spec.isolation.runAsUser is 0)")
    if request.seccomp_profile not in caps.seccomp_profiles and not _localhost_profile_ok(caps, request):
        missing.append(f"cannot apply seccomp profile {request.seccomp_profile}")
    return missing


def _localhost_profile_ok(caps: ExecutorCapabilities, request: ExecutionRequest) -> bool:
    return request.seccomp_profile.startswith("Localhost/") and "Localhost/*" in caps.seccomp_profiles


async def select_executor(chain: Sequence[TaskExecutor], request: ExecutionRequest) -> TaskExecutor:
    """The first backend in ``chain`` that is healthy and can honour ``request``.

    Raises IsolationUnavailable naming, for each backend, why it was skipped.
    """
    skipped: list[str] = []
    for executor in chain:
        missing = unmet_requirements(executor.capabilities(), request)
        if missing:
            skipped.append(f"{executor.name}: {'; '.join(missing)}")
            continue
        try:
            await executor.health_check()
        except ExecutorUnavailable as exc:
            skipped.append(f"{executor.name}: unavailable ({exc})")
            continue
        return executor
    if not chain:
        raise IsolationUnavailable("no executor is configured")
    raise IsolationUnavailable("no executor can run this task: " + " | ".join(skipped))


__all__ = ["select_executor", "unmet_requirements", "NetworkMode"]
