"""Deterministic names, labels and owner references of the objects a task owns."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ..api.task import API_VERSION, KIND, ExecutionTask

TASK_LABEL = "expbuild.io/task"
TASK_NAME_ANNOTATION = "expbuild.io/task-name"
MANAGED_BY = {"app.kubernetes.io/managed-by": "expbuild-isolation"}
_NAME_MAX = 63


def object_name(task_name: str, suffix: str = "") -> str:
    """Deterministic, DNS-1123-label-safe name for an object owned by the task (``xt-<name><suffix>``)."""
    safe = re.sub(r"[^a-z0-9-]+", "-", task_name.lower()).strip("-")
    plain = f"xt-{safe}{suffix}"
    if safe == task_name and len(plain) <= _NAME_MAX:
        return plain
    digest = hashlib.sha256(task_name.encode()).hexdigest()[:8]
    room = _NAME_MAX - len("xt-") - len(suffix) - len(digest) - 1
    stem = safe[:room].strip("-")
    return f"xt-{stem}-{digest}{suffix}" if stem else f"xt-{digest}{suffix}"


def task_label(task_name: str) -> str:
    """Value of the ``expbuild.io/task`` label: the name, or a hashed stem when it cannot be a label."""
    if len(task_name) <= _NAME_MAX and re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", task_name):
        return task_name
    return object_name(task_name)[len("xt-"):]


def labels_for(task: ExecutionTask) -> dict[str, str]:
    return {TASK_LABEL: task_label(task.metadata.name), **MANAGED_BY}


def owner_reference(task: ExecutionTask) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": task.metadata.name, "uid": task.metadata.uid,
            "controller": True, "blockOwnerDeletion": True}


def metadata_for(task: ExecutionTask, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels_for(task),
                            "annotations": {TASK_NAME_ANNOTATION: task.metadata.name},
                            "ownerReferences": [owner_reference(task)]}
    if task.metadata.namespace:
        meta["namespace"] = task.metadata.namespace
    return meta
