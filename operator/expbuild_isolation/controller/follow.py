"""The Job path's truth: a task's status recomputed from its Job and Pod whenever either changes (``reconcile``)."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from .. import metrics
from ..api.task import Phase
from ..kube import render
from ..kube.leases import (
    NODE_LABEL,
)
from ..kube.names import MANAGED_BY, TASK_LABEL, TASK_NAME_ANNOTATION, object_name
from ..kube.status import status_from
from .report import transition
from .state import OperatorState, now, readable, task_key

FOLLOWED = {TASK_LABEL: kopf.PRESENT, **MANAGED_BY}


async def follow(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
    """A Job or Pod of ours changed: recompute its task's status.

    Not for a Job's ADDED event without status: that is the Job this process just created, which says nothing
    yet (its status, and its pod, arrive as events of their own).
    """
    if type == "ADDED" and not body.get("status"):
        return
    meta = body.get("metadata", {})
    name = (meta.get("annotations") or {}).get(TASK_NAME_ANNOTATION)
    if name and meta.get("namespace"):
        await reconcile(kwargs["memo"].state, meta["namespace"], name)


async def reconcile(state: OperatorState, namespace: str, name: str) -> None:
    async with state.lock(task_key(namespace, name)):
        try:
            await _reconcile(state, namespace, name)
        except Exception:
            metrics.RECONCILE_ERRORS.inc()
            raise


async def _reconcile(state: OperatorState, namespace: str, name: str) -> None:
    body = await state.api.get_task(namespace, name)
    task = readable(body) if body is not None else None
    if body is None or task is None:
        return
    if (task.status.phase.finished or task.status.phase is Phase.PENDING or task.spec.cancel
            or task.spec.isolation.executor not in render.JOB_EXECUTORS or NODE_LABEL in task.metadata.labels):
        return
    job = await state.api.get("batch/v1", "Job", namespace, object_name(name))
    pod = await state.api.pod_for_task(namespace, name, job)
    patch = status_from(task, job, pod, now(), image_pull_grace=state.config.image_pull_grace_seconds,
                        trusted_vm=state.config.trusted_vm_runtime_classes)
    current = task.status.model_dump(by_alias=True, mode="json")
    if not patch or all(current.get(key) == value for key, value in patch.items()):
        return
    finished = Phase(patch["phase"]).finished
    if finished and pod is not None:
        text, cut = await _log_tail(state, pod)
        patch["logs"] = {"stdoutTail": text, "stderrTail": "", "truncated": cut}
    await state.api.patch_task_status(namespace, name, patch)
    transition(state, task, body, patch)


async def _log_tail(state: OperatorState, pod: dict[str, Any]) -> tuple[str, bool]:
    meta = pod.get("metadata", {})
    try:
        return await state.api.log_tail(meta["namespace"], meta["name"], render.TASK_CONTAINER,
                                        state.config.log_tail_bytes)
    except Exception as exc:  # logs are a convenience; the status must not wait for them
        logging.getLogger(__name__).warning("no log tail for %s: %s", meta.get("name"), exc)
        return "", False
