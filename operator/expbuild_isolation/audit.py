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
REQUESTER_ANNOTATION = "expbuild.io/requester"


def requester(task: ExecutionTask) -> str:
    """Who asked: the ``expbuild.io/requester`` annotation, else the first field manager, else ""."""
    if task.metadata.annotations.get(REQUESTER_ANNOTATION):
        return task.metadata.annotations[REQUESTER_ANNOTATION]
    managed = (task.metadata.model_extra or {}).get("managedFields") or []
    for entry in managed:
        if isinstance(entry, dict) and entry.get("manager"):
            return str(entry["manager"])
    return ""


def audit_record(task: ExecutionTask, event: Literal["start", "end"], *, executor: str, isolation: str,
                 outcome: dict[str, Any] | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The audit line for ``event``; ``outcome`` (phase, reason, exitCode, ...) belongs to "end"."""
    record: dict[str, Any] = {
        "time": (now or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
        "event": event,
        "task": task.key,
        "uid": task.metadata.uid,
        "requester": requester(task),
        "image": task.spec.image,
        "argv": list(task.spec.command),
        "executor": executor,
        "isolation": isolation,
        "limits": task.spec.resources.model_dump(by_alias=True, exclude_none=True),
        "network": task.spec.network.policy.value,
    }
    if outcome is not None:
        record["outcome"] = outcome
    return record


def emit(record: dict[str, Any]) -> None:
    LOGGER.info(json.dumps(record, sort_keys=True, separators=(",", ":"), default=str))
