"""An ExecutionTask's status: what happened, as the operator, a node agent or a local run writes it."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field

from .model import IsolationLevel, Model, Phase


class TaskStats(Model):
    cpu_time_seconds: float | None = Field(None, description="User + system CPU time of the whole task.")
    peak_memory_bytes: int | None = Field(None, description="Highest memory use seen.")
    disk_read_bytes: int | None = Field(None, description="Bytes read from block devices, where measured.")
    disk_write_bytes: int | None = Field(None, description="Bytes written to block devices, where measured.")


class LogTails(Model):
    stdout_tail: str = Field("", description="Last part of standard output.")
    stderr_tail: str = Field("", description="Last part of standard error.")
    truncated: bool = Field(False, description="True when the tails are shorter than the logs.")


class OutputRecord(Model):
    path: str = Field(description="Path relative to the workspace.")
    sha256: str = Field(description="Hex SHA-256 of the content.")
    size_bytes: int = Field(description="Size in bytes.")
    executable: bool = Field(False, description="Executable bit set.")


class Condition(Model):
    type: str = Field(description="Scheduled, Started or Finished.")
    status: Literal["True", "False", "Unknown"] = Field(description="Whether the condition holds.")
    reason: str = Field("", description="Machine-readable cause of the last transition.")
    message: str = Field("", description="Human-readable detail of the last transition.")
    last_transition_time: datetime | None = Field(None, description="When status last changed.")


class ExecutionTaskStatus(Model):
    model_config = ConfigDict(extra="ignore")

    phase: Phase = Field(Phase.PENDING, description="Pending Scheduled Running Succeeded Failed TimedOut "
                         "Cancelled Error.")
    reason: str = Field("", description="Machine-readable why: Completed, NonZeroExit, OOMKilled, "
                        "DeadlineExceeded, Evicted, AgentLost, Rejected, IsolationUnavailable, ...")
    message: str = Field("", description="Human-readable detail.")
    executor: str = Field("", description="The backend that really ran the task.")
    isolation_level: IsolationLevel | None = Field(None, description="The isolation the task really got.")
    node: str = Field("", description="Node (or host) the task ran on.")
    image_id: str | None = Field(None, alias="imageID", description="The image that ran, by content: the engine's image ID "
                          "(sha256:...) for Docker and Podman, the kubelet's containerStatuses[].imageID on the Job "
                          "path. A tag is resolved once, when the container is created.")
    exit_code: int | None = Field(None, description="Exit code; 124 after a timeout, 128+N after signal N.")
    start_time: datetime | None = Field(None, description="When the command started.")
    completion_time: datetime | None = Field(None, description="When the task reached a finished phase.")
    duration_seconds: float | None = Field(None, description="Wall-clock run time of the command in seconds.")
    stats: TaskStats | None = Field(None, description="Resource use measured by the executor.")
    logs: LogTails | None = Field(None, description="Bounded tails of the command's output.")
    outputs: list[OutputRecord] = Field(default_factory=list, description="Collected output files with digests.")
    conditions: list[Condition] = Field(default_factory=list, description="Standard Kubernetes conditions.")
    observed_generation: int | None = Field(None, description="spec generation this status describes.")
