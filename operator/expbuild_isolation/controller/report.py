"""What a task's phase change tells the world besides its status: Events, metrics and the audit line."""

from __future__ import annotations

from typing import Any

import kopf

from .. import audit, metrics
from ..api.task import ExecutionTask, Phase
from ..kube.status import parse_time
from .state import EXECUTOR, OperatorState


def transition(state: OperatorState, task: ExecutionTask, body: dict[str, Any], patch: dict[str, Any]) -> None:
    """Events, metrics and audit for a phase change (or a new reason within a phase)."""
    old, new = task.status.phase, Phase(patch["phase"])
    if (old, task.status.reason) == (new, patch.get("reason", "")):
        return
    warning = new in (Phase.FAILED, Phase.TIMED_OUT, Phase.ERROR) or patch.get("reason") in ("Unschedulable",
                                                                                             "ImagePullBackOff")
    message = patch.get("message") or f"{old.value} -> {new.value}"
    if "exitCode" in patch:
        message = f"exit code {patch['exitCode']}; {message}"
    kopf.event(body, type="Warning" if warning else "Normal", reason=patch.get("reason") or new.value,
               message=message[:1024])
    if new is Phase.RUNNING and task.key not in state.running:
        state.running.add(task.key)
        created = parse_time(body.get("metadata", {}).get("creationTimestamp"))
        started = parse_time(patch.get("startTime"))
        metrics.task_started(EXECUTOR, (started - created).total_seconds() if created and started else None)
    if new.finished:
        finished(state, task, patch)
    metrics.TASKS_RUNNING.labels(executor=EXECUTOR).set(len(state.running))


def finished(state: OperatorState, task: ExecutionTask, patch: dict[str, Any]) -> None:
    state.running.discard(task.key)
    metrics.TASKS_RUNNING.labels(executor=EXECUTOR).set(len(state.running))
    metrics.task_finished(patch["phase"], EXECUTOR, patch.get("durationSeconds"))
    metrics.account(task.metadata.namespace, patch)
    outcome = {key: patch[key] for key in ("phase", "reason", "message", "exitCode", "durationSeconds", "node")
               if key in patch}
    audit.emit(audit.audit_record(task, "end", executor=EXECUTOR,
                                  isolation=patch.get("isolationLevel") or "", outcome=outcome))
