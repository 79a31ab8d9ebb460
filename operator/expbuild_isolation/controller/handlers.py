"""kopf handlers: decide, call ``cluster``, patch status. Rendering and status mapping live in ``kube``.

A task's life: its first event (``on_task``) -> check and render -> create the
objects (idempotent: an existing object the task owns is adopted) -> Scheduled.
From then on every event of its Job or Pod (and a slow operator-wide resync)
recomputes the status from what the API server says, so a restarted operator
rebuilds the truth instead of remembering it. ``spec.cancel`` removes the Job
and ends in Cancelled. Tasks are handled from kopf's event stream, not its
create/field handlers, so kopf stores nothing on them: the status is the only
state, and every step is idempotent. Only a task unfinished on a node agent
carries the finalizer (``needs_cleanup``): garbage collection removes a Job
task's objects, and nothing blocks deleting a namespace or the CRD once tasks
are done. Status is patched only through ``cluster`` (never kopf's ``patch``)
so that all writers are serialized by one per-task lock.

Before anything is created, the task is judged against the ExecutionPolicies of its namespace
(``tenancy``: kept from watches, never read per task): a violation ends it Error/PolicyViolation with an
Event naming the policy; a raised floor is what it is rendered or placed with; beyond its namespace's
quota it waits Pending (QuotaExceeded) and starts, oldest first, when another finishes.

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
import contextlib
import contextvars
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import kopf
from pydantic import ValidationError

from .. import audit, metrics
from ..api.policy import POLICY_PLURAL
from ..api.task import GROUP, PLURAL, VERSION, ExecutionTask, Phase
from ..kube import network, placement, render
from ..kube.config import OperatorConfig
from ..kube.errors import RenderError
from ..kube.leases import (
    AGENT_LABEL, LEASE_API_VERSION, NODE_LABEL, agent_lease_name, claim_holder, claim_name, fresh_agents,
    label_value, lease_is_fresh,
)
from ..kube.names import MANAGED_BY, TASK_LABEL, TASK_NAME_ANNOTATION, object_name
from ..kube.status import parse_time, status_from, timestamp
from ..worker.local import describe_task_error
from .cluster import ApiError, Cluster, NotOwned, refused_for_good
from .tenancy import Tenancy, raised

EXECUTOR = "job"
REPORTING_COMPONENT = "expbuild-isolation"
RETRY_SECONDS = 5.0  # a start that failed for a passing reason (the API server unreachable) is tried again
FOLLOWED = {TASK_LABEL: kopf.PRESENT, **MANAGED_BY}


@dataclass
class OperatorState:
    """Shared by every handler through ``memo.state`` (kopf copies the memo per object, not this)."""

    config: OperatorConfig
    cluster: Cluster | None = None
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    # tasks whose start this process has done (Job created, placed on an agent, rejected or cancelled): key -> uid.
    # kopf may call ``start`` again with a body older than what this process wrote since.
    started: dict[str, str] = field(default_factory=dict)
    fenced: set[str] = field(default_factory=set)  # namespaces whose shared deny-all policy is known to be in place
    retries: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # a start to try again soon
    # unfinished tasks seen on the watch stream: key -> placed on a node agent (has the node label)
    unfinished: dict[str, bool] = field(default_factory=dict)
    loops: list[asyncio.Task[None]] = field(default_factory=list)
    tenancy: Tenancy = field(default_factory=Tenancy)  # policies, namespace labels, quotas
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
    settings.posting.reporting_component = REPORTING_COMPONENT  # `kubectl describe` says who wrote the Event


async def on_task(body: kopf.Body, memo: kopf.Memo, type: str | None, logger: Any, **_: Any) -> None:
    """Every event of a task (and each one kopf lists at startup): track it, start it, or cancel it.

    An event handler, not kopf's create/field handlers: those store progress and the last-handled spec in two
    annotation patches per task, which is a third of a task's writes to the API server. Here every step is
    idempotent and the task's status is the only state, so nothing needs storing; a step that fails for a
    passing reason is tried again ``RETRY_SECONDS`` later, and by the resync after that.
    """
    state: OperatorState = memo.state
    track(state, body, type)
    if type == "DELETED" or _phase_of(body).finished:
        return
    meta = body.get("metadata") or {}
    try:
        if (body.get("spec") or {}).get("cancel"):
            await cancel(state, meta.get("namespace", ""), meta.get("name", ""))
        elif _phase_of(body) is Phase.PENDING:
            await start(state, dict(body))
    except kopf.TemporaryError as exc:
        logger.warning(f"{exc}; trying again in {RETRY_SECONDS:g}s")
        _retry_later(state, meta.get("namespace", ""), meta.get("name", ""))


def _retry_later(state: OperatorState, namespace: str, name: str) -> None:
    key = _key(namespace, name)
    if key in state.retries:
        return

    async def again() -> None:
        await asyncio.sleep(RETRY_SECONDS)
        state.retries.pop(key, None)
        try:
            await resync(state, namespace, name)
        except kopf.TemporaryError:
            _retry_later(state, namespace, name)

    context = state.handler_context or contextvars.copy_context()
    state.retries[key] = asyncio.get_running_loop().create_task(again(), context=context.copy())


def readable(body: dict[str, Any]) -> ExecutionTask | None:
    """The task in ``body``, or None when the models refuse it (a handler failing on it would be retried for ever)."""
    try:
        return ExecutionTask.model_validate(body)
    except ValidationError:
        return None


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
        if await _start(state, task, dict(body)):
            state.started[task.key] = task.metadata.uid


async def _start(state: OperatorState, task: ExecutionTask, body: dict[str, Any]) -> bool:
    """Under the task's lock: cancel, reject, wait for a slot (False), place on an agent, or create the Job
    path's objects."""
    if task.spec.cancel:
        await _cancel(state, task, body, "cancelled before it started (spec.cancel)")
        return True
    verdict = state.tenancy.judge(task)
    if not verdict.allowed:
        await _reject(state, task, body, "PolicyViolation", verdict.refusal())
        return True
    if not state.tenancy.admit(task, body, verdict):
        await _wait_for_slot(state, task, verdict)
        return False
    task, note = raised(task, verdict)
    plan = await _plan(state, task)
    if plan.kind == "error":
        await _reject(state, task, body, plan.reason, "; ".join(filter(None, [plan.message, note])))
        return True
    if plan.kind == "agent":
        await _place(state, task, body, plan, note)
        return True
    try:
        objects = render.objects_for(task, state.config)
    except RenderError as exc:
        await _reject(state, task, body, exc.reason, "; ".join(filter(None, [str(exc), note])))
        return True
    try:
        if network.isolated(task):  # the fence exists before the first pod it must fence
            await ensure_fence(state, task.metadata.namespace)
        for obj in objects:
            await state.api.create_or_adopt(obj, task.metadata.uid)
    except NotOwned as exc:
        await _reject(state, task, body, "NameConflict", str(exc))
        return True
    except ApiError as exc:
        if refused_for_good(exc):  # the same request would be refused again: say so once, no retries
            await _reject(state, task, body, "Rejected",
                          f"the API server refused the task's {exc.kind or 'objects'}: {exc}")
            return True
        metrics.RECONCILE_ERRORS.inc()
        raise kopf.TemporaryError(f"creating the task's objects failed: {exc}", delay=5) from exc
    except Exception as exc:
        metrics.RECONCILE_ERRORS.inc()
        raise kopf.TemporaryError(f"creating the task's objects failed: {exc}", delay=5) from exc
    if task.status.phase is Phase.PENDING:
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


def _start_next(state: OperatorState, namespace: str) -> None:
    """Slots are free in ``namespace``: start its oldest waiting tasks that fit (each is judged again)."""
    context = state.handler_context or contextvars.copy_context()
    for body in state.tenancy.next_up(namespace):
        asyncio.get_running_loop().create_task(_start_waiting(state, body), context=context.copy())


async def _start_waiting(state: OperatorState, body: dict[str, Any]) -> None:
    meta = body.get("metadata") or {}
    try:
        await start(state, body)
    except kopf.TemporaryError as exc:
        logging.getLogger(__name__).warning("starting %s/%s failed: %s", meta.get("namespace"), meta.get("name"),
                                            exc)
        _retry_later(state, meta.get("namespace", ""), meta.get("name", ""))


async def load_tenancy(state: OperatorState) -> None:
    """At startup, before any watch: the policies, namespace labels and waiting tasks (one listing each)."""
    await state.tenancy.load(state.api, state.config.namespaces)


async def policy_changed(body: kopf.Body, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    """An ExecutionPolicy was created, changed or deleted: judge from now on by it; a quota may have grown."""
    state: OperatorState = memo.state
    state.tenancy.policy_event(dict(body), type)
    for namespace in state.tenancy.waiting_namespaces():
        _start_next(state, namespace)


async def namespace_changed(body: kopf.Body, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    """A namespace's labels (which policies govern it) were seen or changed."""
    state: OperatorState = memo.state
    state.tenancy.namespace_event(dict(body), type)
    name = (body.get("metadata") or {}).get("name") or ""
    if name in state.tenancy.waiting_namespaces():
        _start_next(state, name)


async def ensure_fence(state: OperatorState, namespace: str) -> None:
    """The namespace's shared deny-all NetworkPolicy exists as rendered (checked once per namespace and process;
    ``fence_changed`` puts it back when it is deleted or edited)."""
    if namespace in state.fenced:
        return
    if await state.api.ensure(network.render_shared_policy(namespace), network.shared_policy_intact):
        logging.getLogger(__name__).info("created the deny-all NetworkPolicy of namespace %s", namespace)
    state.fenced.add(namespace)


async def fence_changed(body: kopf.Body, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    """A shared deny-all policy was deleted or edited: put it back now, before a pod runs unfenced."""
    state: OperatorState = memo.state
    namespace = (body.get("metadata") or {}).get("namespace") or ""
    if namespace not in state.fenced:
        return  # not one this process relies on (yet): ensured before its first task
    if type == "DELETED" or not network.shared_policy_intact(dict(body)):
        state.fenced.discard(namespace)
        kopf.warn(body, reason="FenceRestored", message="the task pods' deny-all NetworkPolicy was changed or "
                                                         "deleted; the operator puts it back")
        await ensure_fence(state, namespace)


async def _plan(state: OperatorState, task: ExecutionTask) -> placement.Plan:
    """Where ``task`` runs; the agents' Leases are read only when the answer can depend on them."""
    plan = placement.decide(task, [], config=state.config)
    if plan.kind == "job":
        return plan
    leases = await state.api.list_labelled(LEASE_API_VERSION, "Lease", state.config.agent_namespace, AGENT_LABEL)
    return placement.decide(task, fresh_agents(leases, now()), config=state.config)


async def _place(state: OperatorState, task: ExecutionTask, body: dict[str, Any], plan: placement.Plan,
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


def track(state: OperatorState, body: kopf.Body, type: str | None) -> None:
    """Keep ``state.unfinished`` in step with the watch stream (the periodic loops walk it).

    A task deleted while unfinished on the Job path has no finalizer (garbage collection removes its Job and
    pod): its end is recorded here, from the DELETED event.
    """
    meta = body.get("metadata", {})
    if not meta.get("namespace") or not meta.get("name"):
        return
    if state.handler_context is None:
        state.handler_context = contextvars.copy_context()
    key = _key(meta["namespace"], meta["name"])
    if state.tenancy.seen(key, dict(body), deleted=type == "DELETED"):
        _start_next(state, meta["namespace"])
    if type == "DELETED":
        if state.unfinished.pop(key, None) is not None:
            with contextlib.suppress(ValidationError):  # (an object the handlers could not read either)
                _finished(state, ExecutionTask.model_validate(dict(body)), {
                    "phase": Phase.CANCELLED.value, "reason": "Deleted",
                    "message": "the task was deleted before it finished"})
        state.locks.pop(key, None)
        state.started.pop(key, None)
        retry = state.retries.pop(key, None)
        if retry is not None:
            retry.cancel()
    elif _phase_of(body).finished:
        state.unfinished.pop(key, None)
    else:
        state.unfinished[key] = NODE_LABEL in (meta.get("labels") or {})


def _phase_of(body: kopf.Body | dict[str, Any]) -> Phase:
    try:
        return Phase((body.get("status") or {}).get("phase") or "Pending")
    except ValueError:  # not ours to judge here; the task's own handlers see the object
        return Phase.PENDING


def needs_cleanup(body: kopf.Body, **_: Any) -> bool:
    """Whether a task holds the finalizer: only while it is unfinished on a node agent.

    That is the one thing garbage collection does not clean up (a Job and its pod go with the task through
    owner references); a finished task, or one on the Job path, never blocks deleting its namespace or the CRD.
    """
    labels = (body.get("metadata") or {}).get("labels") or {}
    return NODE_LABEL in labels and not _phase_of(body).finished


async def resync(state: OperatorState, namespace: str, name: str) -> None:
    """The periodic check of one unfinished task: start it if it is still Pending, else follow its Job."""
    body = await state.api.get_task(namespace, name)
    if body is None:
        return
    if _phase_of(body) is Phase.PENDING and not (body.get("spec") or {}).get("cancel"):
        await start(state, body)
    elif (body.get("spec") or {}).get("cancel") and not _phase_of(body).finished:
        await cancel(state, namespace, name)
    else:
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
    _transition(state, task, body, patch)


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
            if plan.kind == "job":  # cannot happen while placement is a function of the spec; never a 2nd path
                plan = placement.Plan("error", reason="AgentLost", message=f"the node agent on {node} is gone "
                                      f"before it started the task")
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
    metrics.account(task.metadata.namespace, patch)
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
    await state.api.delete_owned_job(task.metadata.namespace, object_name(task.metadata.name), task.metadata.uid)
    patch = {"phase": Phase.CANCELLED.value, "reason": "Cancelled", "message": message,
             "completionTime": timestamp(now()), "observedGeneration": task.metadata.generation}
    if task.status.start_time is not None:
        patch["durationSeconds"] = round((now() - task.status.start_time).total_seconds(), 3)
    await state.api.patch_task_status(task.metadata.namespace, task.metadata.name, patch)
    kopf.event(body, type="Normal", reason="Cancelled", message=message)
    _finished(state, task, patch | {"isolationLevel": (task.status.isolation_level.value
                                                                      if task.status.isolation_level else "")})


async def cancel(state: OperatorState, namespace: str, name: str) -> None:
    """spec.cancel was set on an unfinished task: stop it (its Job, or the agent's run) and end it Cancelled."""
    async with state.lock(_key(namespace, name)):
        fresh = await state.api.get_task(namespace, name)
        task = readable(fresh) if fresh is not None else None
        if fresh is None or task is None:
            return
        if not task.status.phase.finished and task.spec.cancel:
            await _cancel(state, task, fresh, "cancelled by spec.cancel")


async def _invalid(state: OperatorState, body: dict[str, Any], exc: ValidationError) -> None:
    """An object that is no valid ExecutionTask ends in Error once, with the fields named; never a crash loop."""
    meta = body.get("metadata") or {}
    if not meta.get("namespace") or not meta.get("name"):
        return
    message = f"not a valid ExecutionTask: {describe_task_error(exc)}"[:1024]
    patch = {"phase": Phase.ERROR.value, "reason": "InvalidTask", "message": message,
             "completionTime": timestamp(now())}
    await state.api.patch_task_status(meta["namespace"], meta["name"], patch)
    kopf.event(body, type="Warning", reason="InvalidTask", message=message)


async def delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A task deleted while a node agent has it: end it Cancelled, so the agent stops its processes."""
    state: OperatorState = memo.state
    task = readable(dict(body))
    if task is None:
        return  # nothing of it can be running: let the finalizer go
    async with state.lock(task.key):
        if not task.status.phase.finished:
            await _cancel(state, task, dict(body), "the task was deleted")


def make_registry(config: OperatorConfig, registry: kopf.OperatorRegistry | None = None) -> kopf.OperatorRegistry:
    """A registry (new, or the one given) with every handler; the caller adds a login handler (see ``run``)."""
    registry = kopf.OperatorRegistry() if registry is None else registry
    resource = (GROUP, VERSION, PLURAL)
    kopf.on.startup(registry=registry)(configure)
    kopf.on.startup(registry=registry, id="periodic")(start_loops)
    kopf.on.cleanup(registry=registry, id="periodic")(stop_loops)
    kopf.on.event(*resource, registry=registry, id="task")(on_task)
    kopf.on.delete(*resource, registry=registry, id="delete", when=needs_cleanup)(delete)
    kopf.on.event("batch", "v1", "jobs", labels=FOLLOWED, registry=registry, id="follow-job")(follow)
    kopf.on.event("", "v1", "pods", labels=FOLLOWED, registry=registry, id="follow-pod")(follow)
    kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels={network.SHARED_POLICY_LABEL: kopf.PRESENT},
                  registry=registry, id="fence")(fence_changed)
    kopf.on.event(GROUP, VERSION, POLICY_PLURAL, registry=registry, id="policy")(policy_changed)
    kopf.on.event("", "v1", "namespaces", registry=registry, id="namespace")(namespace_changed)
    return registry
