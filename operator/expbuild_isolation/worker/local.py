"""Run an ExecutionTask manifest on this machine: ``expbuild-isolation run task.yaml``.

Task -> ExecutionRequest -> the first qualifying executor -> ExecutionResult ->
the same ExecutionTaskStatus a cluster would write. Nothing here knows about
Kubernetes; a ConfigMap input is read from ``<name>.yaml`` next to the task
(``worker.config_maps``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError

from ..api.messages import shown
from ..api.task import ExecutionTask, ExecutionTaskStatus, IsolationLevel, LogTails, OutputRecord, Phase, TaskStats
from ..executors.base import (
    ExecutionRequest, ExecutionResult, ExecutorUnavailable, IsolationUnavailable, NetworkPolicy, ResourceLimits,
    TaskExecutor, TerminationReason,
)
from ..executors.select import select_executor
from ..executors.workspace import BlockedPath, InputBlob, WorkspaceError, create_workspace, make_dirs_beneath, \
    place_inputs, remove_workspace
from .bounded_yaml import BadYaml, load_documents
from .config import WorkerConfig, describe_validation_error
from .config_maps import ConfigMapError, ConfigMapLookup, blobs_of, read_beside
from .task_limits import REASON as LIMIT_TOO_LARGE
from .task_limits import over_caps
from .policy import local_judgement

LOG_TAIL_CHARS = 2048


class InvalidTask(Exception):
    """The manifest cannot be run as written; the message names the field."""


def load_task(path: str | Path) -> ExecutionTask:
    """Read and validate one ExecutionTask manifest (bounded: see ``bounded_yaml``)."""
    path = Path(path)
    try:
        documents = [d for d in load_documents(path) if d is not None]
    except FileNotFoundError:
        raise InvalidTask(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InvalidTask(f"{path}: is a directory, not a manifest file") from None
    except OSError as exc:
        raise InvalidTask(f"{path}: cannot read: {exc.strerror or exc}") from None
    except BadYaml as exc:
        raise InvalidTask(str(exc)) from None
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


def input_blobs(task: ExecutionTask, config_maps: ConfigMapLookup) -> list[InputBlob]:
    """Inline inputs as they are; a ConfigMap input's keys (data and binaryData) from ``config_maps(name)``."""
    blobs: list[InputBlob] = []
    for item in task.spec.inputs:
        if item.content is not None:
            blobs.append(InputBlob(item.path, item.content.encode(), item.executable))
            continue
        assert item.config_map is not None
        name = item.config_map.name
        try:
            blobs += blobs_of(config_maps(name), name, item.path)
        except ConfigMapError as exc:
            raise InvalidTask(f"spec.inputs[{item.path!r}].configMap: {exc}") from None
    return blobs


def prepare_working_dir(workspace: Path, working_dir: str) -> None:
    """Create ``spec.workingDir`` in the workspace before any backend runs, so every backend (host,
    namespace, Docker, Podman) starts in it as the Job path's init container does; refuse an input
    file (or a link) in its way instead of creating through it."""
    try:
        make_dirs_beneath(workspace, working_dir)
    except BlockedPath as exc:
        what = "an input file, not a directory" if exc.is_file else exc.what
        raise InvalidTask(f"spec.workingDir: {shown(working_dir)} runs through {exc.where!r}, which is {what}") \
            from None


def _in_workspace(exc: OSError, workspace: Path) -> str:
    """An OSError about a workspace path, told with the path relative to the workspace (no host paths)."""
    name = os.path.relpath(exc.filename, workspace) if isinstance(exc.filename, str) else ""
    return f"{exc.strerror or exc.__class__.__name__}{': ' + repr(name) if name else ''}"


def request_for(task: ExecutionTask, workspace: Path, *, log_limit_bytes: int | None = None,
                output_limit_bytes: int | None = None, floor: IsolationLevel | None = None) -> ExecutionRequest:
    """The executor's view of ``task``; ``floor`` raises (never lowers) the isolation minimum."""
    spec = task.spec
    minimum = spec.isolation.minimum if floor is None else max(spec.isolation.minimum, floor)
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
        image=spec.image, minimum_isolation=minimum, seccomp_profile=spec.isolation.seccomp_profile,
        read_only_root=spec.isolation.read_only_root_filesystem, run_as_user=spec.isolation.run_as_user, **extra)


def _task_id(task: ExecutionTask) -> str:
    meta = task.metadata
    base = f"{meta.namespace}-{meta.name}" if meta.namespace else meta.name
    return meta.uid or f"{base}-{os.getpid()}-{datetime.now(timezone.utc).strftime('%H%M%S%f')}"


_PHASES = {
    TerminationReason.COMPLETED: Phase.SUCCEEDED,
    TerminationReason.DEADLINE_EXCEEDED: Phase.TIMED_OUT,
    TerminationReason.CANCELLED: Phase.CANCELLED,
    TerminationReason.SANDBOX_FAILED: Phase.ERROR,   # not run at all: not the task's failure
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
        isolation_level=result.isolation_level, node=node, image_id=result.image_id or None,
        exit_code=None if phase is Phase.ERROR else result.exit_code,  # the command never ran
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
                   base_dir: Path = Path("."), config_maps: ConfigMapLookup | None = None,
                   floor: IsolationLevel | None = None, on_selected=None,  # type: ignore[no-untyped-def]
                   node: str | None = None) -> ExecutionTaskStatus:
    """Run ``task`` through the first executor in ``chain`` that qualifies; never raises for task problems.

    ConfigMap inputs come from ``config_maps`` (the node agent's, fetched from the task's namespace), else
    from ``<name>.yaml`` files in ``base_dir``. ``node`` is what the status reports as the node (default:
    this host's name; the node agent passes its Kubernetes node name).
    """
    node = node or socket.gethostname()
    verdict = local_judgement(task, config)   # the administrator's policy first, then what this machine can hold
    if verdict is not None and not verdict.allowed:
        return error_status(verdict.reason, verdict.refusal(), node=node)
    if verdict is not None and verdict.floor is not None:
        floor = verdict.floor.value if floor is None else max(floor, verdict.floor.value)
    too_large = over_caps(task.spec, config.task_limits)
    if too_large:
        return error_status(LIMIT_TOO_LARGE, "; ".join(too_large), node=node)
    try:
        blobs = input_blobs(task, config_maps or read_beside(base_dir))
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
        except WorkspaceError as exc:
            return error_status("InvalidTask", f"spec.inputs: {exc}", node=node)
        except OSError as exc:   # e.g. one input's path runs through another input's file
            return error_status("InvalidTask", f"spec.inputs: {_in_workspace(exc, workspace)}", node=node)
        try:
            prepare_working_dir(workspace, task.spec.working_dir)
        except InvalidTask as exc:
            return error_status("InvalidTask", str(exc), node=node)
        request = request_for(task, workspace, output_limit_bytes=config.max_output_bytes, floor=floor)
        try:
            executor = await select_executor(chain, request)
        except IsolationUnavailable as exc:
            asked = task.spec.isolation.minimum
            raised = (f" (spec.isolation.minimum {asked.value} is raised to {request.minimum_isolation.value} here)"
                      if request.minimum_isolation is not asked else "")
            return error_status("IsolationUnavailable", f"{exc}{raised}", node=node)
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
