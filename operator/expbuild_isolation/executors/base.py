"""The executor contract (seed design, section 3.2): what every backend takes and gives back.

A backend runs one ``ExecutionRequest`` in a workspace directory that the caller
has already filled with the inputs, and answers with an ``ExecutionResult``. It
states what it can enforce in ``capabilities()``; selection (``select.py``)
trusts that statement, so it must be honest: a backend that cannot enforce a
limit says so rather than ignoring it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..api.task import IsolationLevel, NetworkMode

__all__ = [
    "ExecutionRequest", "ExecutionResult", "ExecutionStats", "ExecutorCapabilities", "ExecutorError",
    "ExecutorUnavailable", "IsolationLevel", "IsolationUnavailable", "NetworkMode", "NetworkPolicy",
    "OutputFile", "ResourceLimits", "TaskExecutor", "TerminationReason", "DEFAULT_LOG_LIMIT", "DEFAULT_OUTPUT_LIMIT",
]

DEFAULT_LOG_LIMIT = 1 << 20  # bytes of stdout and of stderr kept per task
DEFAULT_OUTPUT_LIMIT = 8 << 30  # bytes of declared outputs digested per task (sparse holes count)


class ExecutorError(Exception):
    """Base of everything an executor raises on purpose."""


class ExecutorUnavailable(ExecutorError):
    """The backend cannot run anything now (daemon down, no privileges, image missing); says why."""


class IsolationUnavailable(ExecutorError):
    """No configured backend meets the task's isolation floor or limits; says what was missing."""


@dataclass(frozen=True)
class NetworkPolicy:
    """None / Localhost / Restricted(allow) / Full."""

    mode: NetworkMode = NetworkMode.NONE
    allow: tuple[str, ...] = ()

    @classmethod
    def none(cls) -> NetworkPolicy:
        return cls(NetworkMode.NONE)

    @classmethod
    def full(cls) -> NetworkPolicy:
        return cls(NetworkMode.FULL)


@dataclass(frozen=True)
class ResourceLimits:
    """Hard limits; None means "the executor's default", not "unlimited"."""

    cpu_cores: float | None = None
    memory_bytes: int | None = None
    disk_bytes: int | None = None
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    max_processes: int | None = None

    def merged_over(self, defaults: ResourceLimits) -> ResourceLimits:
        """The request's limits where it set them, else the executor's defaults (seed 4.1 merge_limits)."""
        return ResourceLimits(
            cpu_cores=self.cpu_cores if self.cpu_cores is not None else defaults.cpu_cores,
            memory_bytes=self.memory_bytes if self.memory_bytes is not None else defaults.memory_bytes,
            disk_bytes=self.disk_bytes if self.disk_bytes is not None else defaults.disk_bytes,
            network=self.network,
            max_processes=self.max_processes if self.max_processes is not None else defaults.max_processes,
        )


@dataclass(frozen=True)
class ExecutionRequest:
    """One command to run. ``workspace`` is a host directory already holding the inputs."""

    task_id: str
    argv: tuple[str, ...]
    workspace: Path
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str = ""                # relative to the workspace
    output_paths: tuple[str, ...] = ()   # relative to the workspace
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    timeout_seconds: float = 600.0
    image: str = ""
    minimum_isolation: IsolationLevel = IsolationLevel.CONTAINER
    seccomp_profile: str = "RuntimeDefault"
    read_only_root: bool = True
    run_as_user: int | None = 65534
    log_limit_bytes: int = DEFAULT_LOG_LIMIT
    output_limit_bytes: int = DEFAULT_OUTPUT_LIMIT  # all declared outputs together; more is a problem, not hashed


class TerminationReason(str, enum.Enum):
    COMPLETED = "Completed"              # exit 0
    NON_ZERO_EXIT = "NonZeroExit"
    DEADLINE_EXCEEDED = "DeadlineExceeded"  # exit 124
    OOM_KILLED = "OOMKilled"             # exit 137
    PIDS_LIMIT = "PidsLimit"             # fork was refused at the pids limit and the task failed
    CANCELLED = "Cancelled"
    START_FAILED = "StartFailed"         # the program could not be started (exit 127)
    SANDBOX_FAILED = "SandboxFailed"     # the sandbox could not be built (a privilege or kernel feature missing)


@dataclass(frozen=True)
class OutputFile:
    path: str
    sha256: str
    size_bytes: int
    executable: bool


@dataclass(frozen=True)
class ExecutionStats:
    duration_seconds: float = 0.0
    cpu_time_seconds: float | None = None
    peak_memory_bytes: int | None = None
    disk_read_bytes: int | None = None
    disk_write_bytes: int | None = None


@dataclass(frozen=True)
class ExecutionResult:
    exit_code: int
    reason: TerminationReason
    executor: str
    isolation_level: IsolationLevel
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    output_files: tuple[OutputFile, ...] = ()
    output_problems: tuple[str, ...] = ()   # outputs missing or refused (e.g. a symlink leaving the workspace)
    stats: ExecutionStats = field(default_factory=ExecutionStats)
    message: str = ""
    image_id: str = ""                      # container executors: the content ID of the image that ran


@dataclass(frozen=True)
class ExecutorCapabilities:
    """What a backend really enforces; selection reads nothing else."""

    isolation_level: IsolationLevel
    supports_cpu_limit: bool = False
    supports_memory_limit: bool = False
    supports_disk_limit: bool = False
    supports_pids_limit: bool = False
    network_policies: frozenset[NetworkMode] = frozenset({NetworkMode.FULL})
    supports_readonly_rootfs: bool = False
    seccomp_profiles: frozenset[str] = frozenset({"Unconfined"})
    uses_image: bool = False
    platform: str = "linux"
    runs_as_root: bool = True       # can honour spec.isolation.runAsUser 0 (inside its own sandbox)


@runtime_checkable
class TaskExecutor(Protocol):
    """A backend. ``name`` is what the task status reports as ``executor``."""

    name: str

    async def execute(self, request: ExecutionRequest) -> ExecutionResult: ...

    def isolation_level(self) -> IsolationLevel: ...

    async def health_check(self) -> None:
        """Raise ExecutorUnavailable with the reason when the backend cannot run tasks now."""

    async def warmup(self) -> None:
        """Pull or import images, fill pools. Idempotent."""

    def capabilities(self) -> ExecutorCapabilities: ...
