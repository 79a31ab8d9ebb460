"""A task's steps: start it (Job path, node agent, or a refusal), cancel it, end it when deleted; each idempotent."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from .. import audit, metrics
from ..api.task import ExecutionTask, Phase
from ..kube import network, placement, render
from ..kube.errors import RenderError
from ..kube.leases import (
    AGENT_LABEL,
    LEASE_API_VERSION,
    NODE_LABEL,
    fresh_agents,
    label_value,
)
from ..kube.names import object_name
from ..kube.status import timestamp
from ..worker.local import describe_task_error
from .cluster import ApiError, NotOwned, refused_for_good
from .fence import ensure_fence
from .follow import reconcile
from .report import finished
from .state import EXECUTOR, OperatorState, now, phase_of, readable, section, task_key
from .tenancy import raised

RETRY_SECONDS = 5.0  # a start that failed for a passing reason (the API server unreachable) is tried again
FINALIZER = "expbuild.io/finalizer"  # on a task unfinished on a node agent: its deletion cancels it first


def retry_later(state: OperatorState, namespace: str, name: str) -> None:
    key = task_key(namespace, name)
    if key in state.retries:
        return

    async def again() -> None:
        await asyncio.sleep(RETRY_SECONDS)
        state.retries.pop(key, None)
        try:
            await resync(state, namespace, name)
        except (kopf.TemporaryError, ApiError):
            retry_later(state, namespace, name)

    context = state.handler_context or contextvars.copy_context()
    state.retries[key] = asyncio.get_running_loop().create_task(again(), context=context.copy())


async def resync(state: OperatorState, namespace: str, name: str) -> None:
    """The periodic check of one unfinished task: start it if it is still Pending, else follow its Job."""
    body = await state.api.get_task(namespace, name)
    if body is None or await keep_finalizer(state, body):
        return
    if phase_of(body) is Phase.PENDING and not section(body, "spec").get("cancel"):
        await start(state, body)
    elif section(body, "spec").get("cancel") and not phase_of(body).finished:
        await cancel(state, namespace, name)
    else:
        await reconcile(state, namespace, name)


async def start(state: OperatorState, body: dict[str, Any]) -> None:
    """A new task: decide where it runs and create what it needs, once."""
    try:
        task = ExecutionTask.model_validate(body)
    except ValidationError as exc:  # the CRD's schema refuses these; an old CRD or a bug may not
        await _invalid(state, body, exc)
        return
    if task.status.phase.finished or NODE_LABEL in task.metadata.labels:
        return  # finished, or placed on a node agent (``agent_check`` watches it from now on)
    async with state.lock(task.key):
        if state.started.get(task.key) == task.metadata.uid:
            return  # (a restarted operator lists fresh bodies: their status says what was done)
        with state.jobs_first.starting() as reached_job:
            if await _start(state, task, dict(body), reached_job):
                state.started[task.key] = task.metadata.uid


async def _start(state: OperatorState, task: ExecutionTask, body: dict[str, Any],
                 reached_job: Callable[[], None]) -> bool:
    """Under the task's lock: cancel, reject, wait for a slot (False), place on an agent, or create the Job
    path's objects (then, once ``reached_job``, the Scheduled status waits for other tasks' Jobs)."""
    if task.spec.cancel:
        await cancel_now(state, task, body, "cancelled before it started (spec.cancel)")
        return True
    verdict = state.tenancy.judge(task)
    if not verdict.allowed:
        await reject(state, task, body, verdict.reason, verdict.refusal())
        return True
    if not state.tenancy.admit(task, body, verdict):
        await _wait_for_slot(state, task, verdict)
        return False
    task, note = raised(task, verdict)
    plan = await plan_for(state, task)
    if plan.kind == "error":
        await reject(state, task, body, plan.reason, "; ".join(filter(None, [plan.message, note])))
        return True
    if plan.kind == "agent":
        await place(state, task, body, plan, note)
        return True
    try:
        objects = render.objects_for(task, state.config)
    except RenderError as exc:
        await reject(state, task, body, exc.reason, "; ".join(filter(None, [str(exc), note])))
        return True
    try:
        if network.isolated(task):  # the fence exists before the first pod it must fence
            await ensure_fence(state, task.metadata.namespace)
        for obj in objects:
            await state.api.create_or_adopt(obj, task.metadata.uid)
    except NotOwned as exc:
        await reject(state, task, body, "NameConflict", str(exc))
        return True
    except ApiError as exc:
        if refused_for_good(exc):  # the same request would be refused again: say so once, no retries
            await reject(state, task, body, "Rejected",
                          f"the API server refused the task's {exc.kind or 'objects'}: {exc}")
            return True
        metrics.RECONCILE_ERRORS.inc()
        raise kopf.TemporaryError(f"creating the task's objects failed: {exc}", delay=5) from exc
    except Exception as exc:
        metrics.RECONCILE_ERRORS.inc()
        raise kopf.TemporaryError(f"creating the task's objects failed: {exc}", delay=5) from exc
    reached_job()
    if task.status.phase is Phase.PENDING:
        await state.jobs_first.wait_turn()
        level = render.isolation_level(task, state.config).value
        patch = {"phase": Phase.SCHEDULED.value, "reason": "JobCreated", "message": note, "executor": EXECUTOR,
                 "isolationLevel": level, "observedGeneration": task.metadata.generation}
        await state.api.patch_task_status(task.metadata.namespace, task.metadata.name, patch)
        kopf.event(body, type="Normal", reason="Scheduled",
                   message=f"Job {object_name(task.metadata.name)} created ({level} isolation)")
        audit.emit(audit.audit_record(task, "start", executor=EXECUTOR, isolation=level, policies=verdict.policies))
    # The Job's own events bring its status (``follow``); nothing to read back here.
    return True


async def _wait_for_slot(state: OperatorState, task: ExecutionTask, verdict: Any) -> None:
    """Its namespace is at its quota: say so once in the status (Pending, QuotaExceeded); it starts later."""
    if task.status.reason != "QuotaExceeded":
        await state.api.patch_task_status(task.metadata.namespace, task.metadata.name,
                                          state.tenancy.waiting_status(task, verdict))


def start_next(state: OperatorState, namespace: str) -> None:
    """Slots are free in ``namespace``: start its oldest waiting tasks that fit (each is judged again)."""
    context = state.handler_context or contextvars.copy_context()
    for body in state.tenancy.next_up(namespace):
        asyncio.get_running_loop().create_task(_start_waiting(state, body), context=context.copy())


async def _start_waiting(state: OperatorState, body: dict[str, Any]) -> None:
    meta = section(body, "metadata")
    try:
        await start(state, body)
    except (kopf.TemporaryError, ApiError) as exc:  # passing, or not ours to fix: try again later
        logging.getLogger(__name__).warning("starting %s/%s failed: %s", meta.get("namespace"), meta.get("name"),
                                            exc)
        retry_later(state, meta.get("namespace", ""), meta.get("name", ""))


async def plan_for(state: OperatorState, task: ExecutionTask) -> placement.Plan:
    """Where ``task`` runs; the agents' Leases are read only when the answer can depend on them."""
    plan = placement.decide(task, [], config=state.config)
    if plan.kind == "job":
        return plan
    leases = await state.api.list_labelled(LEASE_API_VERSION, "Lease", state.config.agent_namespace, AGENT_LABEL)
    return placement.decide(task, fresh_agents(leases, now()), config=state.config)


async def place(state: OperatorState, task: ExecutionTask, body: dict[str, Any], plan: placement.Plan,
                 note: str = "") -> None:
    """Hand ``task`` to the agent on ``plan.node``: status first, then the label the agent lists by."""
    meta = task.metadata
    message = "; ".join(filter(None, [plan.message, note]))
    patch = {"phase": Phase.SCHEDULED.value, "reason": plan.reason, "message": message, "executor": "agent",
             "node": plan.node, "observedGeneration": meta.generation}
    await state.api.patch_task_status(meta.namespace, meta.name, patch)
    labels = {NODE_LABEL: label_value(plan.node)}
    await state.api.patch_task(meta.namespace, meta.name, {"metadata": {"labels": labels}})
    kopf.event(body, type="Normal", reason="Scheduled", message=f"placed on node agent {plan.node}: {message}"[:1024])


async def reject(state: OperatorState, task: ExecutionTask, body: dict[str, Any], reason: str, message: str) -> None:
    """End in Error for what only the operator can see; one Event, no retries."""
    patch = {"phase": Phase.ERROR.value, "reason": reason, "message": message, "executor": EXECUTOR,
             "completionTime": timestamp(now()), "observedGeneration": task.metadata.generation}
    await state.api.patch_task_status(task.metadata.namespace, task.metadata.name, patch)
    kopf.event(body, type="Warning", reason=reason, message=message[:1024])
    finished(state, task, patch)


async def cancel_now(state: OperatorState, task: ExecutionTask, body: dict[str, Any], message: str) -> None:
    await state.api.delete_owned_job(task.metadata.namespace, object_name(task.metadata.name), task.metadata.uid)
    patch = {"phase": Phase.CANCELLED.value, "reason": "Cancelled", "message": message,
             "completionTime": timestamp(now()), "observedGeneration": task.metadata.generation}
    if task.status.start_time is not None:
        patch["durationSeconds"] = round((now() - task.status.start_time).total_seconds(), 3)
    await state.api.patch_task_status(task.metadata.namespace, task.metadata.name, patch)
    kopf.event(body, type="Normal", reason="Cancelled", message=message)
    finished(state, task, patch | {"isolationLevel": (task.status.isolation_level.value
                                                                      if task.status.isolation_level else "")})


async def cancel(state: OperatorState, namespace: str, name: str) -> None:
    """spec.cancel was set on an unfinished task: stop it (its Job, or the agent's run) and end it Cancelled."""
    async with state.lock(task_key(namespace, name)):
        fresh = await state.api.get_task(namespace, name)
        task = readable(fresh) if fresh is not None else None
        if fresh is None or task is None:
            return
        if not task.status.phase.finished and task.spec.cancel:
            await cancel_now(state, task, fresh, "cancelled by spec.cancel")


async def _invalid(state: OperatorState, body: dict[str, Any], exc: ValidationError) -> None:
    """An object that is no valid ExecutionTask ends in Error once, with the fields named; never a crash loop."""
    meta = section(body, "metadata")
    if not meta.get("namespace") or not meta.get("name"):
        return
    message = f"not a valid ExecutionTask: {describe_task_error(exc)}"[:1024]
    patch = {"phase": Phase.ERROR.value, "reason": "InvalidTask", "message": message,
             "completionTime": timestamp(now())}
    await state.api.patch_task_status(meta["namespace"], meta["name"], patch)
    kopf.event(body, type="Warning", reason="InvalidTask", message=message)


async def keep_finalizer(state: OperatorState, body: dict[str, Any]) -> bool:
    """Hold ``FINALIZER`` exactly while ``needs_cleanup``; on deletion, cancel the task first. True: being deleted.

    Our own step, not kopf's deletion handler: a kopf change handler on tasks makes kopf compute a diff
    against a stored copy of every task on every event, a quarter of the operator's CPU in a burst
    (issue #16). A write that loses a race (the resourceVersion test fails) is left to the next event,
    which the other writer's change brings.
    """
    meta = section(body, "metadata")
    finalizers = meta.get("finalizers") if isinstance(meta.get("finalizers"), list) else []
    held = FINALIZER in finalizers
    if meta.get("deletionTimestamp"):
        if held:
            task = readable(body)
            if task is not None and not task.status.phase.finished:
                async with state.lock(task.key):  # read again under the lock: an event and a retry cancel once
                    body = await state.api.get_task(task.metadata.namespace, task.metadata.name) or {}
                    fresh = readable(body) if body else None
                    if fresh is not None and not fresh.status.phase.finished:
                        await cancel_now(state, fresh, body, "the task was deleted")
                        body = await state.api.get_task(task.metadata.namespace, task.metadata.name) or {}
            if body:
                await state.api.set_finalizer(body, FINALIZER, present=False)
        return True
    if needs_cleanup(body) != held:
        await state.api.set_finalizer(body, FINALIZER, present=not held)
    return False


def needs_cleanup(body: kopf.Body | dict[str, Any]) -> bool:
    """Whether a task holds the finalizer: only while it is unfinished on a node agent.

    That is the one thing garbage collection does not clean up (a Job and its pod go with the task through
    owner references); a finished task, or one on the Job path, never blocks deleting its namespace or the CRD.
    """
    labels = section(body, "metadata").get("labels")
    labels = labels if isinstance(labels, Mapping) else {}
    return NODE_LABEL in labels and not phase_of(body).finished
