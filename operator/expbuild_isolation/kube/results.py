"""What the in-pod supervisor reports through the termination message, parsed into status fields.

The message is self-reported by the task's own container, so it only feeds
informational fields (outputs, stats); phase and exit code come from the
kubelet. Anything malformed is ignored, never fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SupervisorReport:
    exit_code: int | None = None
    cpu_time_seconds: float | None = None
    peak_memory_bytes: int | None = None
    cgroup_version: int | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    missing_outputs: list[str] = field(default_factory=list)  # declared but not a regular file after exit
    truncated: bool = False  # the 4 KiB message had no room for every output

    def stats(self) -> dict[str, Any] | None:
        stats = {"cpuTimeSeconds": self.cpu_time_seconds, "peakMemoryBytes": self.peak_memory_bytes}
        stats = {key: value for key, value in stats.items() if value is not None}
        return stats or None


def _number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def parse_termination_message(message: str | None, output_paths: list[str]) -> SupervisorReport | None:
    """The supervisor's JSON -> a report; None when the message is not the supervisor's."""
    if not message:
        return None
    try:
        data = json.loads(message.strip())
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("v") != 1:
        return None
    cpu: float | None = None
    if _number(data.get("cpu_us")) is not None:
        cpu = data["cpu_us"] / 1e6
    elif _number(data.get("cpu_ns")) is not None:
        cpu = data["cpu_ns"] / 1e9
    outputs, missing = [], []
    seen: set[int] = set()
    for entry in data.get("out") or []:
        if not (isinstance(entry, list) and len(entry) == 4 and _number(entry[0]) is not None):
            continue
        index, digest, size, executable = entry
        if index >= len(output_paths) or index in seen:
            continue
        seen.add(index)
        if isinstance(digest, str) and len(digest) == 64 and _number(size) is not None:
            outputs.append({"path": output_paths[index], "sha256": digest, "sizeBytes": size,
                            "executable": executable == 1})
        else:
            missing.append(output_paths[index])
    truncated = bool(data.get("trunc"))
    exit_code = data.get("exit")
    return SupervisorReport(exit_code=exit_code if isinstance(exit_code, int) else None, cpu_time_seconds=cpu,
                            peak_memory_bytes=_number(data.get("mem")), cgroup_version=_number(data.get("cg")),
                            outputs=outputs, missing_outputs=missing, truncated=truncated)
