"""kopf handlers: decide, call ``cluster``, patch status. Rendering and status mapping live in ``kube``.

A task's life: create/resume -> check and render -> create the objects
(idempotent: an existing object the task owns is adopted) -> Scheduled. From
then on every event of its Job or Pod (and a slow operator-wide resync) recomputes the
status from what the API server says, so a restarted operator rebuilds the
truth instead of remembering it. Cancel and delete remove the Job and end in
Cancelled. Status is patched only through ``cluster`` (never kopf's ``patch``)
so that all writers are serialized by one per-task lock.

Before rendering, ``kube.placement`` decides between the Job path and a node
agent (from the agents' fresh Leases). A task placed on an agent gets status
Scheduled (executor ``agent``, the node, the decision as message) and the
label ``expbuild.io/node``; the agent on that node claims, runs and reports
it. ``agent_check`` checks those tasks: when their agent's Lease expires, a
claimed task ends in Error/AgentLost, an unclaimed one is placed again.

The periodic checks (resync every ``resync_seconds``, agent_check every
``agent_check_seconds``) are two operator-wide loops over the unfinished
tasks ``track`` keeps from the watch stream, not one kopf timer per task: a
kopf timer keeps a per-object worker and daemon task alive for the task's
whole life, which cost ~15-25 MiB at 1,000 tasks.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import kopf
from pydantic import ValidationError

from .. import audit, metrics
from ..api.task import GROUP, PLURAL, VERSION, ExecutionTask, Phase
from ..kube import placement, render
from ..kube.config import OperatorConfig
from ..kube.errors import RenderError
from ..kube.leases import (
    AGENT_LABEL, LEASE_API_VERSION, NODE_LABEL, agent_lease_name, claim_holder, claim_name, fresh_agents,
    label_value, lease_is_fresh,
)
from ..kube.names import MANAGED_BY, TASK_LABEL, TASK_NAME_ANNOTATION, object_name
from ..kube.status import parse_time, status_from, timestamp
from ..worker.local import describe_task_error
from .cluster import ApiError, Cluster, NotOwned

EXECUTOR = "job"
FOLLOWED = {TASK_LABEL: kopf.PRESENT, **MANAGED_BY}


@dataclass
class OperatorState:
    """Shared by every handler through ``memo.state`` (kopf copies the memo per object, not this)."""

    config: OperatorConfig
    cluster: Cluster | None = None
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    placed: set[str] = field(default_factory=set)  # tasks this process handed to a node agent
    # unfinished tasks seen on the watch stream: key -> placed on a node agent (has the node label)
    unfinished: dict[str, bool] = field(default_factory=dict)
    loops: list[asyncio.Task[None]] = field(default_factory=list)
    # The context of a kopf handler (``track``): kopf.event needs its posting queue's context variables,
    # which the startup handler that starts the periodic loops does not have yet.
    handler_context: contextvars.Context | None = None

    def lock(self, key: str) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    @property
    def api(self) -> Cluster:
        if self.cluster is None:
            raise kopf.TemporaryError("not logged in to the API server yet", delay=1)
        return self.cluster


def remember_login(state: OperatorState, info: kopf.ConnectionInfo) -> kopf.ConnectionInfo:
    """Give ``cluster`` the credentials kopf just logged in with."""
    old, state.cluster = state.cluster, Cluster.from_connection(info)
    if old is not None:
        old.close()
    return info


def now() -> datetime:
    return datetime.now(timezone.utc)


def _key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = "expbuild.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="expbuild.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="expbuild.io", key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # our own Events tell the story; kopf's INFO chatter would drown it


def readable(body: dict[str, Any]) -> ExecutionTask | None:
    """The task in ``body``, or None when it cannot be read (kopf would retry a failing handler forever)."""
    try:
        return ExecutionTask.model_validate(body)
    except ValidationError:
        return None


async def _unreadable(state: OperatorState, body: dict[str, Any]) -> None:
    """A task object the models refuse (stored before a CRD change, a status written by hand) ends in Error,
    once, with the models' own message; it is never retried."""
    try:
        ExecutionTask.model_validate(body)
        return
    except ValidationError as exc:
        message = describe_task_error(exc)
    status = body.get("status") if isinstance(body.get("status"), dict) else {}
    if (status.get("phase"), status.get("reason")) == (Phase.ERROR.value, "InvalidTask"):
        return
    meta = body["metadata"]
    patch = {"phase": Phase.ERROR.value, "reason": "InvalidTask", "message": message[:1024],
             "completionTime": timestamp(now())}
    await state.api.patch_task_status(meta["namespace"], meta["name"], patch)
    kopf.event(body, type="Warning", reason="InvalidTask", message=message[:1024])


async def start(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    state: OperatorState = memo.state
    task = readable(dict(body))
    if task is None:
        await _unreadable(state, dict(body))
        return
    if task.status.phase.finished or NODE_LABEL in task.metadata.labels:
        return  # finished, or placed on a node agent (``agent_check`` watches it from now on)
    async with state.lock(task.key):
        if task.key in state.placed:  # kopf's body may predate a placement this process made meanwhile
            return  # (placements are made only under this lock, so no API read is needed to see them;
            #          a restarted operator lists fresh bodies that carry the node label)
        if task.spec.cancel:
            await _cancel(state, task, dict(body), "cancelled before it started (spec.cancel)")
            return
        plan = await _plan(state, task)
        if plan.kind == "error":
            await _reject(state, task, dict(body), plan.reason, plan.message)
            return
        if plan.kind == "agent":
            await _place(state, task, dict(body), plan)
            return
        try:
            objects = render.objects_for(task, state.config)
        except RenderError as exc:
            await _reject(state, task, dict(body), exc.reason, str(exc))
            return
        try:
            for obj in objects:
                await state.api.create_or_adopt(obj, task.metadata.uid)
        except NotOwned as exc:
            await _reject(state, task, dict(body), "NameConflict", str(exc))
            return
        except Exception as exc:
            if isinstance(exc, ApiError) and exc.status in (403, 422) and task.spec.isolation.executor == "auto":
                plan = await _plan(state, task, job_refused=str(exc))
                if plan.kind == "agent":
                    await _place(state, task, dict(body), plan)
                    return
            metrics.RECONCILE_ERRORS.inc()
            raise kopf.TemporaryError(f"creating the task's objects failed: {exc}", delay=5) from exc
        fresh = await state.api.get_task(task.metadata.namespace, task.metadata.name)
        if fresh is not None and (readable(fresh) or task).status.phase is Phase.PENDING:
            level = render.isolation_level(task, state.config).value
            patch = {"phase": Phase.SCHEDULED.value, "reason": "JobCreated", "message": "", "executor": EXECUTOR,
                     "isolationLevel": level, "observedGeneration": task.metadata.generation}
            await state.api.patch_task_status(task.metadata.namespace, task.metadata.name, patch)
            kopf.event(dict(body), type="Normal", reason="Scheduled",
                       message=f"Job {object_name(task.metadata.name)} created ({level} isolation)")
            audit.emit(audit.audit_record(task, "start", executor=EXECUTOR, isolation=level))
    await reconcile(state, task.metadata.namespace, task.metadata.name)


async def _plan(state: OperatorState, task: ExecutionTask, **why: Any) -> placement.Plan:
    """Where ``task`` runs; the agents' Leases are read only when the answer can depend on them."""
    plan = placement.decide(task, [], config=state.config, **why)
    if plan.kind == "job":
        return plan
    leases = await state.api.list_labelled(LEASE_API_VERSION, "Lease", state.config.agent_namespace, AGENT_LABEL)
    return placement.decide(task, fresh_agents(leases, now()), config=state.config, **why)


async def _place(state: OperatorState, task: ExecutionTask, body: dict[str, Any], plan: placement.Plan) -> None:
    """Hand ``task`` to the agent on ``plan.node``: status first, then the label the agent lists by."""
    meta = task.metadata
    patch = {"phase": Phase.SCHEDULED.value, "reason": plan.reason, "message": plan.message, "executor": "agent",
             "node": plan.node, "observedGeneration": meta.generation}
    await state.api.patch_task_status(meta.namespace, meta.name, patch)
    state.placed.add(task.key)
    labels = {NODE_LABEL: label_value(plan.node)}
    await state.api.patch_task(meta.namespace, meta.name, {"metadata": {"labels": labels}})
    kopf.event(body, type="Normal", reason="Scheduled",
               message=f"placed on node agent {plan.node}: {plan.message}"[:1024])


async def follow(body: kopf.Body, **kwargs: Any) -> None:
    """A Job or Pod of ours changed: recompute its task's status."""
    meta = body.get("metadata", {})
    name = (meta.get("annotations") or {}).get(TASK_NAME_ANNOTATION)
    if name and meta.get("namespace"):
        await reconcile(kwargs["memo"].state, meta["namespace"], name)


async def track(body: kopf.Body, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    """Keep ``state.unfinished`` in step with the watch stream (the periodic loops walk it)."""
    state: OperatorState = memo.state
    meta = body.get("metadata", {})
    if not meta.get("namespace") or not meta.get("name"):
        return
    if state.handler_context is None:
        state.handler_context = contextvars.copy_context()
    key = _key(meta["namespace"], meta["name"])
    task = readable(dict(body))
    if type == "DELETED" or task is None or task.status.phase.finished:
        state.unfinished.pop(key, None)   # an unreadable task is ended by ``start``, not checked periodically
    else:
        state.unfinished[key] = NODE_LABEL in task.metadata.labels


async def resync(state: OperatorState, namespace: str, name: str) -> None:
    await reconcile(state, namespace, name)


async def start_loops(memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Start the operator-wide periodic resync and agent check (one asyncio task each)."""
    state: OperatorState = memo.state
    state.loops = [
        asyncio.create_task(_periodic(state, state.config.resync_seconds, resync, agents_only=False, logger=logger),
                            name="expbuild-resync"),
        asyncio.create_task(_periodic(state, state.config.agent_check_seconds, agent_check, agents_only=True,
                                      logger=logger), name="expbuild-agent-lost"),
    ]


async def stop_loops(memo: kopf.Memo, **_: Any) -> None:
    state: OperatorState = memo.state
    loops, state.loops = state.loops, []
    for loop in loops:
        loop.cancel()
    await asyncio.gather(*loops, return_exceptions=True)


async def _periodic(state: OperatorState, interval: float, check: Any, *, agents_only: bool, logger: Any,
                    concurrency: int = 16) -> None:
    """Every ``interval`` seconds run ``check`` on each unfinished task (agents' tasks only if asked)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(key: str) -> None:
        namespace, name = key.split("/", 1)
        async with gate:
            if key not in state.unfinished:  # finished or deleted meanwhile
                return
            try:
                await check(state, namespace, name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next round retries, as a failed kopf timer would
                logger.warning(f"periodic {check.__name__} of {key} failed: {exc!r}")

    while True:
        await asyncio.sleep(interval)
        keys = [key for key, on_agent in list(state.unfinished.items()) if on_agent or not agents_only]
        if keys:
            # Each check runs in a copy of a kopf handler's context, so its Events are posted.
            ctx = state.handler_context or contextvars.copy_context()
            await asyncio.gather(*(asyncio.create_task(one(key), context=ctx.copy()) for key in keys))


async def reconcile(state: OperatorState, namespace: str, name: str) -> None:
    async with state.lock(_key(namespace, name)):
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
    pod = await state.api.pod_for_task(namespace, name)
    patch = status_from(task, job, pod, now(), image_pull_grace=state.config.image_pull_grace_seconds)
    if patch.get("reason") == "Unschedulable" and task.spec.isolation.executor == "auto":
        since = _unschedulable_since(pod)
        plan = await _plan(state, task, unschedulable_for=(now() - since).total_seconds()) if since else None
        if plan is not None and plan.kind == "agent":
            await state.api.delete_job(namespace, object_name(name))
            await _place(state, task, body, plan)
            return
    current = task.status.model_dump(by_alias=True, mode="json")
    if not patch or all(current.get(key) == value for key, value in patch.items()):
        return
    finished = Phase(patch["phase"]).finished
    if finished and pod is not None:
        text, cut = await _log_tail(state, pod)
        patch["logs"] = {"stdoutTail": text, "stderrTail": "", "truncated": cut}
    await state.api.patch_task_status(namespace, name, patch)
    _transition(state, task, body, patch)


def _unschedulable_since(pod: dict[str, Any] | None) -> datetime | None:
    for cond in ((pod or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return parse_time(cond.get("lastTransitionTime"))
    return None


async def agent_check(state: OperatorState, namespace: str, name: str) -> None:
    """A task placed on an agent whose Lease expired: AgentLost if claimed, else placed again."""
    async with state.lock(_key(namespace, name)):
        fresh = await state.api.get_task(namespace, name)
        task = readable(fresh) if fresh is not None else None
        if fresh is None or task is None or NODE_LABEL not in task.metadata.labels:
            return
        node = task.status.node or task.metadata.labels.get(NODE_LABEL, "")
        if task.status.phase.finished or task.spec.cancel:
            return
        lease = await state.api.get(LEASE_API_VERSION, "Lease", state.config.agent_namespace, agent_lease_name(node))
        if lease is not None and lease_is_fresh(lease, now()):
            return
        last = ((lease or {}).get("spec") or {}).get("renewTime") or "never"
        claim = await state.api.get(LEASE_API_VERSION, "Lease", task.metadata.namespace, claim_name(task.metadata.uid))
        if claim is None:
            plan = await _plan(state, task)
            if plan.kind == "agent":
                await _place(state, task, fresh, plan)
                return
            if plan.kind == "job":  # an auto task sent to an agent because the Job path failed it
                plan = placement.Plan("error", reason="AgentLost", message=f"the node agent on {node} is gone "
                                      f"and the Job path already refused this task")
            await _reject(state, task, fresh, plan.reason, plan.message)
            return
        message = (f"the node agent {claim_holder(claim)} on {node} stopped renewing its Lease "
                   f"{agent_lease_name(node)} (last renewed {last}); the task's processes are lost with it")
        patch = {"phase": Phase.ERROR.value, "reason": "AgentLost", "message": message, "node": node,
                 "completionTime": timestamp(now()), "observedGeneration": task.metadata.generation}
        await state.api.patch_task_status(task.metadata.namespace, task.metadata.name, patch)
        kopf.event(fresh, type="Warning", reason="AgentLost", message=message[:1024])
        _finished(state, task, patch)


async def _log_tail(state: OperatorState, pod: dict[str, Any]) -> tuple[str, bool]:
    meta = pod.get("metadata", {})
    try:
        return await state.api.log_tail(meta["namespace"], meta["name"], render.TASK_CONTAINER,
                                        state.config.log_tail_bytes)
    except Exception as exc:  # logs are a convenience; the status must not wait for them
        logging.getLogger(__name__).warning("no log tail for %s: %s", meta.get("name"), exc)
        return "", False


def _transition(state: OperatorState, task: ExecutionTask, body: dict[str, Any], patch: dict[str, Any]) -> None:
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
        _finished(state, task, patch)
    metrics.TASKS_RUNNING.labels(executor=EXECUTOR).set(len(state.running))


def _finished(state: OperatorState, task: ExecutionTask, patch: dict[str, Any]) -> None:
    state.running.discard(task.key)
    metrics.TASKS_RUNNING.labels(executor=EXECUTOR).set(len(state.running))
    metrics.task_finished(patch["phase"], EXECUTOR, patch.get("durationSeconds"))
    outcome = {key: patch[key] for key in ("phase", "reason", "message", "exitCode", "durationSeconds", "node")
               if key in patch}
    audit.emit(audit.audit_record(task, "end", executor=EXECUTOR,
                                  isolation=patch.get("isolationLevel") or "", outcome=outcome))


async def _reject(state: OperatorState, task: ExecutionTask, body: dict[str, Any], reason: str, message: str) -> None:
    """End in Error for what only the operator can see; one Event, no retries."""
    patch = {"phase": Phase.ERROR.value, "reason": reason, "message": message, "executor": EXECUTOR,
             "completionTime": timestamp(now()), "observedGeneration": task.metadata.generation}
    await state.api.patch_task_status(task.metadata.namespace, task.metadata.name, patch)
    kopf.event(body, type="Warning", reason=reason, message=message[:1024])
    _finished(state, task, patch)


async def _cancel(state: OperatorState, task: ExecutionTask, body: dict[str, Any], message: str) -> None:
    await state.api.delete_job(task.metadata.namespace, object_name(task.metadata.name))
    patch = {"phase": Phase.CANCELLED.value, "reason": "Cancelled", "message": message,
             "completionTime": timestamp(now()), "observedGeneration": task.metadata.generation}
    if task.status.start_time is not None:
        patch["durationSeconds"] = round((now() - task.status.start_time).total_seconds(), 3)
    await state.api.patch_task_status(task.metadata.namespace, task.metadata.name, patch)
    kopf.event(body, type="Normal", reason="Cancelled", message=message)
    _finished(state, task, patch | {"isolationLevel": (task.status.isolation_level.value
                                                                      if task.status.isolation_level else "")})


async def cancel(body: kopf.Body, memo: kopf.Memo, new: Any, **_: Any) -> None:
    if not new:
        return
    state: OperatorState = memo.state
    task = readable(dict(body))
    if task is None:
        return
    async with state.lock(task.key):
        fresh = await state.api.get_task(task.metadata.namespace, task.metadata.name)
        task = readable(fresh) if fresh is not None else None
        if fresh is None or task is None:
            return
        if not task.status.phase.finished:
            await _cancel(state, task, fresh, "cancelled by spec.cancel")


async def delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    state: OperatorState = memo.state
    task = readable(dict(body))
    if task is None:   # still remove its Job (if any), and let the finalizer go
        meta = body.get("metadata", {})
        await state.api.delete_job(meta["namespace"], object_name(meta["name"]))
        return
    async with state.lock(task.key):
        if not task.status.phase.finished:
            await _cancel(state, task, dict(body), "the task was deleted")
        else:
            await state.api.delete_job(task.metadata.namespace, object_name(task.metadata.name))
    state.locks.pop(task.key, None)
    state.placed.discard(task.key)


def make_registry(config: OperatorConfig, registry: kopf.OperatorRegistry | None = None) -> kopf.OperatorRegistry:
    """A registry (new, or the one given) with every handler; the caller adds a login handler (see ``run``)."""
    registry = kopf.OperatorRegistry() if registry is None else registry
    resource = (GROUP, VERSION, PLURAL)
    kopf.on.startup(registry=registry)(configure)
    kopf.on.startup(registry=registry, id="periodic")(start_loops)
    kopf.on.cleanup(registry=registry, id="periodic")(stop_loops)
    kopf.on.resume(*resource, registry=registry, id="start")(start)
    kopf.on.create(*resource, registry=registry, id="start")(start)
    kopf.on.field(*resource, field="spec.cancel", registry=registry, id="cancel")(cancel)
    kopf.on.delete(*resource, registry=registry, id="delete")(delete)
    kopf.on.event("batch", "v1", "jobs", labels=FOLLOWED, registry=registry, id="follow-job")(follow)
    kopf.on.event("", "v1", "pods", labels=FOLLOWED, registry=registry, id="follow-pod")(follow)
    kopf.on.event(*resource, registry=registry, id="track")(track)
    return registry
