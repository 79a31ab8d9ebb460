"""Job + Pod (as the API server returns them) -> the task's status patch.

Pure: ``status_from(task, job, pod, now)`` returns the dict to merge into
``.status`` (camelCase keys), or ``{}`` when nothing changes. Finished phases
are sticky. Phase and exit code come from the kubelet and the Job controller;
outputs and stats from the supervisor's termination message.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..api.task import ExecutionTask, Phase
from .render import PREPARE_CONTAINER, TASK_CONTAINER, vm_level
from .results import parse_termination_message
from .supervisor import supervised_outputs

TIMEOUT_EXIT_CODE = 124
# On the Job path outputs and stats come from the supervisor, inside the pod the untrusted command shares:
# the condition tells a consumer which fields are the pod's claims and which the kubelet's facts.
SELF_REPORTED = ("SelfReported", "True", "InPodSupervisor",
                 "status.outputs and status.stats were reported from inside the task's pod, which the command "
                 "shares; phase, exit code, OOM kill and deadline come from the kubelet and the Job controller")
PULL_ERRORS = frozenset({"ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "RegistryUnavailable",
                         "CreateContainerConfigError"})
FATAL_WAITING = frozenset({"InvalidImageName"})


def timestamp(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def _container_status(pod: dict[str, Any] | None, name: str, key: str = "containerStatuses") -> dict[str, Any]:
    for status in ((pod or {}).get("status") or {}).get(key) or []:
        if status.get("name") == name:
            return status
    return {}


def _isolation(job: dict[str, Any] | None, pod: dict[str, Any] | None, trusted_vm: frozenset[str]) -> str:
    """VM only when the pod's RuntimeClass is one the operator trusts as a VM runtime."""
    pod_spec = ((job or {}).get("spec") or {}).get("template", {}).get("spec") or (pod or {}).get("spec") or {}
    return vm_level(pod_spec.get("runtimeClassName"), trusted_vm).value


Wanted = tuple[str, str, str, str] | tuple[str, str, str, str, datetime | None]


def task_conditions(task: ExecutionTask, wanted: list[Wanted], now: datetime) -> list[dict[str, Any]]:
    """The conditions list for ``wanted`` (type, status, reason, message[, when]); the node agent writes them too."""
    return _conditions(task, wanted, now)


def finished_conditions(task: ExecutionTask, reason: str, message: str, *, started: datetime | None,
                        finished: datetime, now: datetime) -> list[dict[str, Any]]:
    """A finished task's Scheduled, Started and Finished, however quickly it ran; the times are when each
    happened (the command's start and end), not when the status was written."""
    start = (("Started", "True", "", "", started) if started is not None
             else ("Started", "False", "NeverStarted", "the command never started", finished))
    return _conditions(task, [("Scheduled", "True", "", ""), start, ("Finished", "True", reason, message, finished)],
                       now)


def _conditions(task: ExecutionTask, wanted: list[Wanted], now: datetime) -> list[dict[str, Any]]:
    """Conditions in the API's shape, keeping lastTransitionTime while a status does not change."""
    before = {cond.type: cond for cond in task.status.conditions}
    result = []
    for kind, status, reason, message, *when in wanted:
        old = before.get(kind)
        if old and old.status == status and old.last_transition_time:
            since = old.last_transition_time
        else:
            since = (when[0] if when else None) or now
        result.append({"type": kind, "status": status, "reason": reason, "message": message,
                       "lastTransitionTime": timestamp(since)})
    return result


def status_from(task: ExecutionTask, job: dict[str, Any] | None, pod: dict[str, Any] | None, now: datetime, *,
                image_pull_grace: float = 120.0, trusted_vm: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The status patch for ``task`` given its Job and Pod (either may be None).

    ``trusted_vm``: the RuntimeClasses that count as isolation VM (``OperatorConfig.trusted_vm_runtime_classes``).
    """
    patch = _status_from(task, job, pod, now, image_pull_grace)
    if patch:
        patch["isolationLevel"] = _isolation(job, pod, trusted_vm)
    return patch


def _status_from(task: ExecutionTask, job: dict[str, Any] | None, pod: dict[str, Any] | None, now: datetime,
                 image_pull_grace: float) -> dict[str, Any]:
    if task.status.phase.finished:
        return {}
    if job is None and pod is None:
        if task.status.phase in (Phase.SCHEDULED, Phase.RUNNING):
            return _finish(task, job, pod, now, Phase.ERROR, "JobLost",
                           "the task's Job disappeared before it finished (deleted, or removed by its TTL)")
        return {}
    node = ((pod or {}).get("spec") or {}).get("nodeName") or ""
    main = _container_status(pod, TASK_CONTAINER)
    prepare = _container_status(pod, PREPARE_CONTAINER, "initContainerStatuses")
    terminated = (main.get("state") or {}).get("terminated")
    failed = _condition(job, "Failed")
    pod_status = (pod or {}).get("status") or {}

    if terminated:
        code = terminated.get("exitCode")
        if terminated.get("reason") == "OOMKilled":
            return _finish(task, job, pod, now, Phase.FAILED, "OOMKilled",
                           f"the task ran out of memory (limit {task.spec.resources.memory or 'none'})", terminated, code)
        if (failed and failed.get("reason") == "DeadlineExceeded") or _killed_at_deadline(task, job, terminated):
            return _timed_out(task, job, pod, now, terminated)
        if code == 0:
            return _finish(task, job, pod, now, Phase.SUCCEEDED, "Completed", "", terminated, 0)
        return _finish(task, job, pod, now, Phase.FAILED, "NonZeroExit", f"the command exited with code {code}",
                       terminated, code)
    if pod_status.get("phase") == "Failed" and pod_status.get("reason") == "Evicted":
        return _finish(task, job, pod, now, Phase.FAILED, "Evicted", pod_status.get("message") or "the pod was evicted")
    prepared = (prepare.get("state") or {}).get("terminated")
    if prepared and prepared.get("exitCode") not in (0, None):
        detail = prepared.get("message") or prepared.get("reason") or f"exit code {prepared.get('exitCode')}"
        return _finish(task, job, pod, now, Phase.ERROR, "PrepareFailed",
                       f"placing the inputs failed (init container {PREPARE_CONTAINER!r}): {detail}")
    if failed:
        if failed.get("reason") == "DeadlineExceeded":
            return _timed_out(task, job, pod, now, None)
        return _finish(task, job, pod, now, Phase.FAILED, failed.get("reason") or "JobFailed", failed.get("message", ""))
    if _condition(job, "Complete"):
        return _finish(task, job, pod, now, Phase.SUCCEEDED, "Completed", "", None, 0)

    for status in (prepare, main):
        waiting = (status.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        if reason in FATAL_WAITING or reason in PULL_ERRORS:
            since = parse_time((pod or {}).get("metadata", {}).get("creationTimestamp")) or now
            if reason in FATAL_WAITING or (now - since).total_seconds() >= image_pull_grace:
                return _finish(task, job, pod, now, Phase.ERROR, reason,
                               waiting.get("message") or f"container {status.get('name')!r} cannot start: {reason}")
            return _progress(task, job, pod, now, Phase.SCHEDULED, reason, waiting.get("message", ""), node,
                             [("Scheduled", "True", "", ""), ("ImageReady", "False", reason, waiting.get("message", ""))])

    running = (main.get("state") or {}).get("running")
    if running:
        patch = _progress(task, job, pod, now, Phase.RUNNING, "Started", "", node,
                          [("Scheduled", "True", "", ""), ("Started", "True", "", "")])
        patch["startTime"] = running.get("startedAt") or patch.get("startTime")
        return patch
    scheduled = next((c for c in pod_status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
    if scheduled and scheduled.get("status") == "False":
        reason = scheduled.get("reason") or "Unschedulable"
        return _progress(task, job, pod, now, Phase.SCHEDULED, reason, scheduled.get("message", ""), node,
                         [("Scheduled", "False", reason, scheduled.get("message", ""))])
    wanted = [("Scheduled", "True", "", "")] if node else []
    return _progress(task, job, pod, now, Phase.SCHEDULED, "JobCreated", "", node, wanted)


def _killed_at_deadline(task: ExecutionTask, job: dict[str, Any] | None, terminated: dict[str, Any]) -> bool:
    """The command died of a signal once its deadline had passed: the Job controller's kill, whatever the order
    in which the pod's termination and the Job's DeadlineExceeded condition reach us.

    The deadline is the Job's: its ``status.startTime`` plus ``activeDeadlineSeconds`` (the task's timeout).
    """
    code = terminated.get("exitCode")
    if not isinstance(code, int) or code < 128:
        return False
    job = job or {}
    started = parse_time((job.get("status") or {}).get("startTime")) or parse_time(terminated.get("startedAt"))
    ended = parse_time(terminated.get("finishedAt"))
    seconds = (job.get("spec") or {}).get("activeDeadlineSeconds") or task.spec.timeout_seconds
    return started is not None and ended is not None and (ended - started).total_seconds() >= seconds - 1


def _outputs_run(task: ExecutionTask, job: dict[str, Any] | None, pod: dict[str, Any] | None) -> list[str]:
    """The output paths of the run: from the task container's command (pod, else Job), else the spec."""
    for owner in (pod, ((job or {}).get("spec") or {}).get("template")):
        for container in ((owner or {}).get("spec") or {}).get("containers") or []:
            if container.get("name") == TASK_CONTAINER:
                paths = supervised_outputs(list(container.get("command") or []))
                if paths is not None:
                    return paths
    return list(task.spec.outputs.paths)


def _common(task: ExecutionTask, job: dict[str, Any] | None, pod: dict[str, Any] | None) -> dict[str, Any]:
    patch: dict[str, Any] = {"executor": "job"}
    if task.metadata.generation is not None:
        patch["observedGeneration"] = task.metadata.generation
    node = ((pod or {}).get("spec") or {}).get("nodeName")
    if node:
        patch["node"] = node
    image_id = _container_status(pod, TASK_CONTAINER).get("imageID")
    if image_id:  # the image the kubelet ran, by content (what the task's tag resolved to on that node)
        patch["imageID"] = image_id
    return patch


def _progress(task: ExecutionTask, job: dict[str, Any] | None, pod: dict[str, Any] | None, now: datetime,
              phase: Phase, reason: str, message: str, node: str,
              wanted: list[tuple[str, str, str, str]]) -> dict[str, Any]:
    patch = _common(task, job, pod) | {"phase": phase.value, "reason": reason, "message": message,
                                        "conditions": _conditions(task, wanted, now)}
    return patch


def _timed_out(task: ExecutionTask, job: dict[str, Any] | None, pod: dict[str, Any] | None, now: datetime,
               terminated: dict[str, Any] | None) -> dict[str, Any]:
    return _finish(task, job, pod, now, Phase.TIMED_OUT, "DeadlineExceeded",
                   f"the task ran longer than its timeout ({task.spec.timeout})", terminated, TIMEOUT_EXIT_CODE)


def _finish(task: ExecutionTask, job: dict[str, Any] | None, pod: dict[str, Any] | None, now: datetime,
            phase: Phase, reason: str, message: str, terminated: dict[str, Any] | None = None,
            exit_code: int | None = None) -> dict[str, Any]:
    terminated = terminated or {}
    job_status = (job or {}).get("status") or {}
    start = (parse_time(terminated.get("startedAt")) or parse_time(job_status.get("startTime"))
             or task.status.start_time)
    end = (parse_time(terminated.get("finishedAt")) or parse_time(job_status.get("completionTime"))
           or parse_time((_condition(job, "Failed") or {}).get("lastTransitionTime")) or now)
    patch = _common(task, job, pod) | {"phase": phase.value, "reason": reason, "message": message,
                                        "completionTime": timestamp(end)}
    if exit_code is not None:
        patch["exitCode"] = exit_code
    if start is not None:
        patch["startTime"] = timestamp(start)
        patch["durationSeconds"] = round(max(0.0, (end - start).total_seconds()), 3)
    report = parse_termination_message(terminated.get("message"), _outputs_run(task, job, pod))
    if report is not None:
        patch["outputs"] = report.outputs
        if report.stats():
            patch["stats"] = report.stats()
        notes = []
        if report.missing_outputs:
            notes.append(f"declared outputs missing or not regular files: {', '.join(report.missing_outputs)}")
            if phase is Phase.SUCCEEDED:  # as on every other backend: no success without the outputs
                reason = patch["reason"] = "OutputMissing"
                patch["phase"] = Phase.FAILED.value
        if report.truncated:
            notes.append("the output report was truncated at 4 KiB; some outputs are not listed")
        patch["message"] = "; ".join(filter(None, [message, *notes]))
    patch["conditions"] = finished_conditions(task, reason, patch["message"], started=start, finished=end, now=now)
    if report is not None:
        patch["conditions"] += _conditions(task, [SELF_REPORTED], now)
    return patch
