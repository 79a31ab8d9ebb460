"""Audit trail: one JSON line per task start and end on the ``expbuild.audit`` logger.

``audit_record`` is pure (tested as such) and shared by the operator and the
agent (the REAPI worker writes its own lines on the same logger); ``emit``
writes it. ``expbuild-isolation run`` writes none: its caller is the person at
the terminal, and its output is the status. Route the logger wherever audit lines must
go (the operator logs it to stdout like everything else).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any, Literal

from .api.task import ExecutionTask

LOGGER = logging.getLogger("expbuild.audit")


def field_manager(task: ExecutionTask) -> str:
    """The program that created the task, as its client named itself (``kubectl-client-side-apply``,
    ``OpenAPI-Generator`` for the Python client), else "". Not a user: the API server's own audit log is the
    record of who created a task.
    """
    managed = (task.metadata.model_extra or {}).get("managedFields") or []
    for entry in managed:
        if isinstance(entry, dict) and entry.get("manager"):
            return str(entry["manager"])
    return ""


def audit_record(task: ExecutionTask, event: Literal["start", "end"], *, executor: str, isolation: str,
                 outcome: dict[str, Any] | None = None, now: datetime | None = None,
                 policies: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The audit line for ``event``; ``outcome`` (phase, reason, exitCode, ...) belongs to "end", ``policies``
    (the ExecutionPolicies that govern the task's namespace and allowed it) to "start"."""
    record: dict[str, Any] = {
        "time": (now or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
        "event": event,
        "task": task.key,
        "namespace": task.metadata.namespace,
        "uid": task.metadata.uid,
        "fieldManager": field_manager(task),
        "image": task.spec.image,
        "argv": list(task.spec.command),
        "executor": executor,
        "isolation": isolation,
        "limits": task.spec.resources.model_dump(by_alias=True, exclude_none=True),
        "network": task.spec.network.policy.value,
    }
    if policies is not None:
        record["policies"] = list(policies)
    if outcome is not None:
        record["outcome"] = outcome
    return record


def emit(record: dict[str, Any]) -> None:
    LOGGER.info(json.dumps(record, sort_keys=True, separators=(",", ":"), default=str))
