"""``[task_limits]`` in the worker file: the most a task may ask of this worker, checked when it runs.

The API's own bounds (``api.bounds``) say what any executor can honour; a worker knows more about
itself. By default a task may ask for at most this machine's CPUs and memory (a disk limit is a
tmpfs, so memory too), the kernel's pid_max, and a 7-day timeout. A task over a cap ends in phase
Error, reason LimitTooLarge, naming the field and the cap, and never starts.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..api import bounds
from ..api.messages import shown
from ..api.quantities import QuantityError, format_bytes, parse_bytes, parse_cpu, parse_duration
from ..api.task import ExecutionTaskSpec

REASON = "LimitTooLarge"


def machine_cpus() -> float:
    try:
        return float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return float(os.cpu_count() or 1)


def machine_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 40   # unknown: large but finite


def kernel_pid_max() -> int:
    try:
        return min(int(Path("/proc/sys/kernel/pid_max").read_text()), bounds.MAX_PIDS)
    except (OSError, ValueError):
        return bounds.MAX_PIDS


class TaskLimits(BaseModel):
    """Quantities as in a task ("2", "8Gi", "1h"); unset means this machine's own size."""

    model_config = ConfigDict(extra="forbid")

    cpu: str | int | None = None
    memory: str | int | None = None
    disk: str | int | None = None
    pids: int | None = Field(None, ge=1, le=bounds.MAX_PIDS)
    timeout: str | None = None

    @field_validator("cpu", "memory", "disk", "timeout")
    @classmethod
    def _parses(cls, value: str | int | None, info) -> str | int | None:  # type: ignore[no-untyped-def]
        if value is None:
            return value
        parse = {"cpu": parse_cpu, "memory": parse_bytes, "disk": parse_bytes, "timeout": parse_duration}
        try:
            parse[info.field_name](value)
        except QuantityError as exc:
            raise ValueError(str(exc)) from None
        return value

    def cpu_cores(self) -> float:
        return parse_cpu(self.cpu) if self.cpu is not None else machine_cpus()

    def memory_bytes(self) -> int:
        return parse_bytes(self.memory) if self.memory is not None else machine_memory()

    def disk_bytes(self) -> int:
        return parse_bytes(self.disk) if self.disk is not None else machine_memory()

    def max_pids(self) -> int:
        return self.pids if self.pids is not None else kernel_pid_max()

    def timeout_seconds(self) -> float:
        return parse_duration(self.timeout) if self.timeout is not None else float(bounds.MAX_TIMEOUT_SECONDS)


def over_caps(spec: ExecutionTaskSpec, caps: TaskLimits) -> list[str]:
    """Each field of ``spec`` that asks for more than this worker's caps, named and with the cap."""
    found = []
    resources = spec.resources

    def over(field: str, asked: object, cap: str, key: str) -> None:
        found.append(f"spec.{field}: {shown(asked)} is more than this worker allows ({cap}; set "
                     f"task_limits.{key} in the worker file to change it)")

    if resources.cpu is not None and (resources.cpu_cores or 0) > caps.cpu_cores():
        over("resources.cpu", resources.cpu, f"{caps.cpu_cores():g} CPUs", "cpu")
    if resources.memory is not None and (resources.memory_bytes or 0) > caps.memory_bytes():
        over("resources.memory", resources.memory, format_bytes(caps.memory_bytes()), "memory")
    if resources.disk is not None and (resources.disk_bytes or 0) > caps.disk_bytes():
        over("resources.disk", resources.disk, format_bytes(caps.disk_bytes()), "disk")
    if resources.pids is not None and resources.pids > caps.max_pids():
        over("resources.pids", resources.pids, str(caps.max_pids()), "pids")
    if spec.timeout_seconds > caps.timeout_seconds():
        over("timeout", spec.timeout, f"{caps.timeout_seconds():g}s", "timeout")
    return found
