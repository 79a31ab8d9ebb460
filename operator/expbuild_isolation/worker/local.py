"""Run an ExecutionTask manifest on this machine: ``expbuild-isolation run task.yaml``.

Task -> ExecutionRequest -> the first qualifying executor -> ExecutionResult ->
the same ExecutionTaskStatus a cluster would write. Nothing here knows about
Kubernetes; a ConfigMap input is read from ``<name>.yaml`` next to the task.
"""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import yaml
from pydantic import ValidationError

from ..api.task import ExecutionTask, ExecutionTaskStatus, LogTails, OutputRecord, Phase, TaskStats
from ..executors.base import (
    ExecutionRequest, ExecutionResult, ExecutorUnavailable, IsolationUnavailable, NetworkPolicy, ResourceLimits,
    TaskExecutor, TerminationReason,
)
from ..executors.select import select_executor
from ..executors.workspace import InputBlob, WorkspaceError, create_workspace, place_inputs, remove_workspace
from .config import WorkerConfig, describe_validation_error

LOG_TAIL_CHARS = 2048


class InvalidTask(Exception):
    """The manifest cannot be run as written; the message names the field."""


def load_task(path: str | Path) -> ExecutionTask:
    """Read and validate one ExecutionTask manifest."""
    path = Path(path)
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except FileNotFoundError:
        raise InvalidTask(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidTask(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidTask(f"{path}: not valid YAML: {exc}") from None
    tasks = [d for d in documents if isinstance(d, dict) and d.get("kind") == "ExecutionTask"]
    if len(tasks) != 1:
        raise InvalidTask(f"{path}: expected one ExecutionTask, found {len(tasks)}")
    return parse_task(tasks[0], source=str(path))


def parse_task(raw: dict, *, source: str = "<task>") -> ExecutionTask:
    try:
        task = ExecutionTask.model_validate(raw)
    except ValidationError as exc:
        raise InvalidTask(f"{source}: {describe_task_error(exc)}") from None
    if not task.metadata.name:
        raise InvalidTask(f"{source}: metadata.name is required")
    return task


def describe_task_error(exc: ValidationError) -> str:
    """One line per problem, named by its manifest path (``spec.resources.memory``)."""
    return describe_validation_error(exc, unknown="unknown field", self_named=("spec.", "metadata."))


def input_blobs(task: ExecutionTask, base_dir: Path) -> list[InputBlob]:
    """Inline inputs as they are; a ConfigMap input from ``<base_dir>/<name>.yaml`` (data and binaryData)."""
    blobs: list[InputBlob] = []
    for item in task.spec.inputs:
        if item.content is not None:
            blobs.append(InputBlob(item.path, item.content.encode(), item.executable))
            continue
        assert item.config_map is not None
        name = item.config_map.name
        source = base_dir / f"{name}.yaml"
        try:
            config_map = yaml.safe_load(source.read_text()) or {}
        except FileNotFoundError:
            raise InvalidTask(f"spec.inputs[{item.path!r}].configMap {name!r}: no ConfigMap file {source} "
                              f"(locally a ConfigMap is read from <name>.yaml next to the task)") from None
        except yaml.YAMLError as exc:
            raise InvalidTask(f"{source}: not valid YAML: {exc}") from None
        if not isinstance(config_map, dict) or config_map.get("kind") != "ConfigMap":
            raise InvalidTask(f"{source}: is not a ConfigMap manifest")
        prefix = "" if item.path == "." else item.path + "/"
        for key, value in (config_map.get("data") or {}).items():
            blobs.append(InputBlob(prefix + key, str(value).encode()))
        for key, value in (config_map.get("binaryData") or {}).items():
            blobs.append(InputBlob(prefix + key, base64.b64decode(value)))
    return blobs


def request_for(task: ExecutionTask, workspace: Path, *, log_limit_bytes: int | None = None,
                output_limit_bytes: int | None = None) -> ExecutionRequest:
    spec = task.spec
    limits = ResourceLimits(
        cpu_cores=spec.resources.cpu_cores, memory_bytes=spec.resources.memory_bytes,
        disk_bytes=spec.resources.disk_bytes, max_processes=spec.resources.pids,
        network=NetworkPolicy(spec.network.policy, tuple(spec.network.allow)))
    extra = {key: value for key, value in (("log_limit_bytes", log_limit_bytes),
                                           ("output_limit_bytes", output_limit_bytes)) if value is not None}
    return ExecutionRequest(
        task_id=_task_id(task), argv=tuple(spec.command), workspace=workspace,
        env={var.name: var.value for var in spec.env}, working_dir=spec.working_dir,
        output_paths=tuple(spec.outputs.paths), limits=limits, timeout_seconds=spec.timeout_seconds,
        image=spec.image, minimum_isolation=spec.isolation.minimum, seccomp_profile=spec.isolation.seccomp_profile,
        read_only_root=spec.isolation.read_only_root_filesystem, run_as_user=spec.isolation.run_as_user, **extra)


def _task_id(task: ExecutionTask) -> str:
    meta = task.metadata
    base = f"{meta.namespace}-{meta.name}" if meta.namespace else meta.name
    return meta.uid or f"{base}-{os.getpid()}-{datetime.now(timezone.utc).strftime('%H%M%S%f')}"


_PHASES = {
    TerminationReason.COMPLETED: Phase.SUCCEEDED,
    TerminationReason.DEADLINE_EXCEEDED: Phase.TIMED_OUT,
    TerminationReason.CANCELLED: Phase.CANCELLED,
}


def status_from_result(result: ExecutionResult, *, started: datetime, finished: datetime, node: str,
                       tail_chars: int = LOG_TAIL_CHARS) -> ExecutionTaskStatus:
    """The status a finished task gets, whichever backend ran it."""
    phase = _PHASES.get(result.reason, Phase.FAILED)
    reason, message = result.reason.value, result.message
    if phase is Phase.SUCCEEDED and result.output_problems:
        phase = Phase.FAILED
        refused = any(word in p for p in result.output_problems
                      for word in ("not followed", "not a regular", "directory", "not digested"))
        reason = "OutputRejected" if refused else "OutputMissing"
        message = "; ".join(result.output_problems)
    elif result.output_problems:
        message = "; ".join(filter(None, [message, *result.output_problems]))
    stdout, stderr = result.stdout.decode("utf-8", "replace"), result.stderr.decode("utf-8", "replace")
    stats = result.stats
    return ExecutionTaskStatus(
        phase=phase, reason=reason, message=message, executor=result.executor,
        isolation_level=result.isolation_level, node=node, exit_code=result.exit_code,
        start_time=started, completion_time=finished, duration_seconds=round(stats.duration_seconds, 4),
        stats=TaskStats(cpu_time_seconds=stats.cpu_time_seconds, peak_memory_bytes=stats.peak_memory_bytes,
                        disk_read_bytes=stats.disk_read_bytes, disk_write_bytes=stats.disk_write_bytes),
        logs=LogTails(stdout_tail=stdout[-tail_chars:], stderr_tail=stderr[-tail_chars:],
                      truncated=result.stdout_truncated or result.stderr_truncated
                      or len(stdout) > tail_chars or len(stderr) > tail_chars),
        outputs=[OutputRecord(path=f.path, sha256=f.sha256, size_bytes=f.size_bytes, executable=f.executable)
                 for f in result.output_files])


def error_status(reason: str, message: str, *, executor: str = "", node: str | None = None) -> ExecutionTaskStatus:
    now = datetime.now(timezone.utc)
    return ExecutionTaskStatus(phase=Phase.ERROR, reason=reason, message=message, executor=executor,
                               completion_time=now, node=node or socket.gethostname())


async def run_task(task: ExecutionTask, chain: Sequence[TaskExecutor], config: WorkerConfig, *,
                   base_dir: Path = Path("."), on_selected=None,  # type: ignore[no-untyped-def]
                   node: str | None = None) -> ExecutionTaskStatus:
    """Run ``task`` through the first executor in ``chain`` that qualifies; never raises for task problems.

    ``node`` is what the status reports as the node (default: this host's name; the node agent passes
    its Kubernetes node name).
    """
    node = node or socket.gethostname()
    try:
        blobs = input_blobs(task, base_dir)
    except InvalidTask as exc:
        return error_status("InvalidTask", str(exc), node=node)
    try:
        workspace = create_workspace(config.work_dir)
    except OSError as exc:
        return error_status("WorkspaceUnavailable", f"cannot create a workspace under {config.work_dir}: "
                                                    f"{exc.strerror} (set work_dir in the worker config)")
    try:
        try:
            place_inputs(workspace, blobs)
        except (WorkspaceError, OSError) as exc:
            return error_status("InvalidTask", f"spec.inputs: {exc}", node=node)
        request = request_for(task, workspace, output_limit_bytes=config.max_output_bytes)
        try:
            executor = await select_executor(chain, request)
        except IsolationUnavailable as exc:
            return error_status("IsolationUnavailable", str(exc), node=node)
        if on_selected is not None:
            on_selected(executor)
        started = datetime.now(timezone.utc)
        try:
            result = await executor.execute(request)
        except ExecutorUnavailable as exc:
            return error_status("ExecutorFailed", f"{executor.name}: {exc}", executor=executor.name, node=node)
        return status_from_result(result, started=started, finished=datetime.now(timezone.utc), node=node)
    finally:
        remove_workspace(workspace)
