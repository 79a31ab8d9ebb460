"""How a node agent tells the cluster about a task: status patches, Events, metrics and audit lines.

The status is the record (a task's phase, reason, exit code...); Events are a convenience for ``kubectl
describe`` and are never worth failing a task over. A final status is written only while the task is
still unfinished: when the operator ended it meanwhile (Cancelled, AgentLost), its word stands.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from typing import Any

from .. import audit, metrics
from ..api.task import ExecutionTask, Phase
from ..kube.status import finished_conditions, parse_time, timestamp
from .api import AgentApi, ApiError, events_path, tasks_path

LOG = logging.getLogger("expbuild.agent")
REPORTING_COMPONENT = "expbuild-isolation-agent"  # what `kubectl describe` and event exporters show


def now() -> datetime:
    return datetime.now(timezone.utc)


class Reporter:
    def __init__(self, api: AgentApi, node: str, identity: str) -> None:
        self.api, self.node, self.identity = api, node, identity
        self.reported: set[str] = set()  # uids whose final status this agent has written (not to be cancelled)

    async def started(self, task: ExecutionTask, body: dict[str, Any], patch: dict[str, Any],
                      policies: tuple[str, ...] = ()) -> None:
        await self.patch_status(task, patch)
        await self.event(body, "Normal", "Started",
                          f"running on node {self.node} with {patch['executor']} "
                          f"({patch['isolationLevel']} isolation)")
        audit.emit(audit.audit_record(task, "start", executor=patch["executor"], isolation=patch["isolationLevel"],
                                      policies=policies))
        metrics.TASKS_RUNNING.labels(executor=patch["executor"]).inc()
        created = parse_time(body.get("metadata", {}).get("creationTimestamp"))
        metrics.task_started(patch["executor"], (now() - created).total_seconds() if created else None)

    async def end_invalid(self, body: dict[str, Any], message: str) -> None:
        meta = body["metadata"]
        try:
            await self.api.merge_patch(tasks_path(meta["namespace"], meta["name"]) + "/status", {"status": {
                "phase": Phase.ERROR.value, "reason": "InvalidTask", "message": message, "node": self.node,
                "completionTime": timestamp(now())}})
            await self.event(body, "Warning", "InvalidTask", message)
        except (ApiError, ValueError) as exc:
            LOG.warning("cannot end the invalid task %s/%s: %s", meta.get("namespace"), meta.get("name"), exc)

    async def finish(self, task: ExecutionTask, body: dict[str, Any], patch: dict[str, Any], *,
                      warning: bool) -> None:
        fresh = await self.api.get(tasks_path(task.metadata.namespace, task.metadata.name))
        if fresh is None or ExecutionTask.model_validate(fresh).status.phase.finished:
            return  # deleted, or ended by the operator (Cancelled, AgentLost) meanwhile: its word stands
        task_now = ExecutionTask.model_validate(fresh)
        current = task_now.status
        at = now()
        started = parse_time(patch.get("startTime")) or current.start_time
        finished = parse_time(patch.get("completionTime")) or at
        patch.setdefault("conditions", finished_conditions(task_now, patch.get("reason", ""), patch.get("message", ""),
                                                           started=started, finished=finished, now=at))
        self.reported.add(task.metadata.uid)
        await self.patch_status(task, patch)
        message = patch.get("message") or f"{current.phase.value} -> {patch['phase']}"
        if "exitCode" in patch:
            message = f"exit code {patch['exitCode']}; {message}"
        await self.event(body, "Warning" if warning else "Normal", patch.get("reason") or patch["phase"], message)
        executor = patch.get("executor") or current.executor or "agent"
        if current.phase is Phase.RUNNING or "startTime" in patch:
            metrics.TASKS_RUNNING.labels(executor=executor).dec()
        metrics.task_finished(patch["phase"], executor, patch.get("durationSeconds"))
        metrics.account(task.metadata.namespace, patch)
        outcome = {key: patch[key] for key in ("phase", "reason", "message", "exitCode", "durationSeconds", "node")
                   if key in patch}
        audit.emit(audit.audit_record(task, "end", executor=executor, isolation=patch.get("isolationLevel") or "",
                                      outcome=outcome))

    async def patch_status(self, task: ExecutionTask, patch: dict[str, Any]) -> None:
        await self.api.merge_patch(tasks_path(task.metadata.namespace, task.metadata.name) + "/status",
                                   {"status": patch})

    async def event(self, body: dict[str, Any], kind: str, reason: str, message: str) -> None:
        meta = body.get("metadata") or {}
        at = timestamp(now())
        namespace = meta.get("namespace")
        event = {"apiVersion": "v1", "kind": "Event",
                 "metadata": {"name": f"{meta.get('name')}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
                 "involvedObject": {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                                    "name": meta.get("name"), "namespace": namespace, "uid": meta.get("uid")},
                 "type": kind, "reason": reason, "message": message[:1024], "count": 1,
                 "firstTimestamp": at, "lastTimestamp": at,
                 "source": {"component": REPORTING_COMPONENT, "host": self.node},
                 "reportingComponent": REPORTING_COMPONENT, "reportingInstance": self.identity}
        try:
            await self.api.create(events_path(namespace), event)
        except ApiError as exc:  # Events are a convenience; the status is the record
            LOG.warning("no event for %s: %s", meta.get("name"), exc)
