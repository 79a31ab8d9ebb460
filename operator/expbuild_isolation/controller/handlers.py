"""kopf handlers: decide, call ``cluster``, patch status. Rendering and status mapping live in ``kube``.

A task's life: its first event (``on_task``) -> check and render -> create the
objects (idempotent: an existing object the task owns is adopted) -> Scheduled.
From then on every event of its Job or Pod (and a slow operator-wide resync)
recomputes the status from what the API server says, so a restarted operator
rebuilds the truth instead of remembering it. ``spec.cancel`` removes the Job
and ends in Cancelled. Tasks are handled from kopf's event stream, not its
create/field/delete handlers, so kopf stores nothing on them and diffs nothing:
the status is the only state, and every step is idempotent. Only a task
unfinished on a node agent carries the finalizer (``keep_finalizer``, from the
same event stream): garbage collection removes a Job task's objects, and
nothing blocks deleting a namespace or the CRD once tasks are done. Status is
patched only through ``cluster`` (never kopf's ``patch``) so that all writers
are serialized by one per-task lock.

Before anything is created, the task is judged against the ExecutionPolicies of its namespace
(``tenancy``: kept from watches, never read per task): a violation ends it Error/PolicyViolation (an image
without a trusted signature Error/UntrustedImage) with an Event naming the policy; a raised floor is what it is rendered or placed with; beyond its namespace's
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

import contextlib
import contextvars
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from ..api.policy import POLICY_PLURAL
from ..api.task import GROUP, PLURAL, VERSION, ExecutionTask, Phase
from ..kube import network
from ..kube.config import OperatorConfig
from ..kube.leases import (
    NODE_LABEL,
)
from .cluster import ApiError
from .fence import fence_changed
from .follow import FOLLOWED, follow
from .lifecycle import (
    RETRY_SECONDS,
    cancel,
    keep_finalizer,
    retry_later,
    start,
    start_next,
)
from .periodic import start_loops, stop_loops
from .report import finished
from .state import REPORTING_COMPONENT, OperatorState, phase_of, section, task_key
from .storage import NoDiffBase, NoProgress


# The resources the operator watches only the labelled of (server-side, and again by kopf at each handler).
JOBS, PODS, NETPOLS = ("batch", "v1", "jobs"), ("", "v1", "pods"), ("networking.k8s.io", "v1", "networkpolicies")
LABELLED: dict[tuple[str, str, str], dict[str, Any]] = {
    JOBS: FOLLOWED, PODS: FOLLOWED, NETPOLS: {network.SHARED_POLICY_LABEL: kopf.PRESENT}}


def label_selector(labels: Mapping[str, Any]) -> str:
    """kopf's ``labels=`` filter as the API's labelSelector: ``key`` for kopf.PRESENT, else ``key=value``."""
    return ",".join(key if value is kopf.PRESENT else f"{key}={value}" for key, value in sorted(labels.items()))


async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf's own finalizer must never be ours: kopf strips its finalizer from objects no kopf handler needs
    # it for, and our tasks' finalizer is kept by ``keep_finalizer``, not by kopf.
    settings.persistence.finalizer = "kopf.expbuild.io/unused"
    settings.persistence.progress_storage = NoProgress()
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING  # our own Events tell the story; kopf's INFO chatter would drown it
    settings.posting.reporting_component = REPORTING_COMPONENT  # `kubectl describe` says who wrote the Event
    # Jobs, pods and NetworkPolicies are watched filtered by the API server to ours: unfiltered, kopf decodes
    # every pod event of the whole cluster and drops all but ours, one by one, at its handlers' ``labels=``.
    for resource, labels in LABELLED.items():
        settings.watching.label_selectors[resource] = label_selector(labels)


async def on_task(body: kopf.Body, memo: kopf.Memo, type: str | None, logger: Any, **_: Any) -> None:
    """Every event of a task (and each one kopf lists at startup): track it, start it, or cancel it.

    An event handler, not kopf's create/field handlers: those store progress and the last-handled spec in two
    annotation patches per task, which is a third of a task's writes to the API server. Here every step is
    idempotent and the task's status is the only state, so nothing needs storing; a step that fails for a
    passing reason is tried again ``RETRY_SECONDS`` later, and by the resync after that.
    """
    state: OperatorState = memo.state
    track(state, body, type)
    if type == "DELETED":
        return
    meta = section(body, "metadata")
    try:
        if await keep_finalizer(state, dict(body)) or phase_of(body).finished:
            return
        if section(body, "spec").get("cancel"):
            await cancel(state, meta.get("namespace", ""), meta.get("name", ""))
        elif phase_of(body) is Phase.PENDING:
            await start(state, dict(body))
    except (kopf.TemporaryError, ApiError) as exc:  # passing, or not ours to fix: try again later
        logger.warning(f"{exc}; trying again in {RETRY_SECONDS:g}s")
        retry_later(state, meta.get("namespace", ""), meta.get("name", ""))


def track(state: OperatorState, body: kopf.Body, type: str | None) -> None:
    """Keep ``state.unfinished`` in step with the watch stream (the periodic loops walk it).

    A task deleted while unfinished on the Job path has no finalizer (garbage collection removes its Job and
    pod): its end is recorded here, from the DELETED event.
    """
    meta = section(body, "metadata")
    if not isinstance(meta.get("namespace"), str) or not isinstance(meta.get("name"), str) \
            or not meta["namespace"] or not meta["name"]:
        return
    if state.handler_context is None:
        state.handler_context = contextvars.copy_context()
    key = task_key(meta["namespace"], meta["name"])
    if state.tenancy.seen(key, dict(body), deleted=type == "DELETED"):
        start_next(state, meta["namespace"])
    if type == "DELETED":
        if state.unfinished.pop(key, None) is not None:
            with contextlib.suppress(ValidationError):  # (an object the handlers could not read either)
                finished(state, ExecutionTask.model_validate(dict(body)), {
                    "phase": Phase.CANCELLED.value, "reason": "Deleted",
                    "message": "the task was deleted before it finished"})
        state.locks.pop(key, None)
        state.started.pop(key, None)
        retry = state.retries.pop(key, None)
        if retry is not None:
            retry.cancel()
    elif phase_of(body).finished:
        state.unfinished.pop(key, None)
    else:
        state.unfinished[key] = NODE_LABEL in (meta.get("labels") if isinstance(meta.get("labels"), Mapping) else {})


async def load_tenancy(state: OperatorState) -> None:
    """At startup, before any watch: the policies, namespace labels and waiting tasks (one listing each)."""
    await state.tenancy.load(state.api, state.config.namespaces)


async def policy_changed(body: kopf.Body, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    """An ExecutionPolicy was created, changed or deleted: judge from now on by it; a quota may have grown."""
    state: OperatorState = memo.state
    state.tenancy.policy_event(dict(body), type)
    for namespace in state.tenancy.waiting_namespaces():
        start_next(state, namespace)


async def namespace_changed(body: kopf.Body, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    """A namespace's labels (which policies govern it) were seen or changed."""
    state: OperatorState = memo.state
    state.tenancy.namespace_event(dict(body), type)
    name = section(body, "metadata").get("name") or ""
    if name in state.tenancy.waiting_namespaces():
        start_next(state, name)


def make_registry(config: OperatorConfig, registry: kopf.OperatorRegistry | None = None) -> kopf.OperatorRegistry:
    """A registry (new, or the one given) with every handler; the caller adds a login handler (see ``run``)."""
    registry = kopf.OperatorRegistry() if registry is None else registry
    resource = (GROUP, VERSION, PLURAL)
    kopf.on.startup(registry=registry)(configure)
    kopf.on.startup(registry=registry, id="periodic")(start_loops)
    kopf.on.cleanup(registry=registry, id="periodic")(stop_loops)
    kopf.on.event(*resource, registry=registry, id="task")(on_task)
    kopf.on.event(*JOBS, labels=LABELLED[JOBS], registry=registry, id="follow-job")(follow)
    kopf.on.event(*PODS, labels=LABELLED[PODS], registry=registry, id="follow-pod")(follow)
    kopf.on.event(*NETPOLS, labels=LABELLED[NETPOLS], registry=registry, id="fence")(fence_changed)
    kopf.on.event(GROUP, VERSION, POLICY_PLURAL, registry=registry, id="policy")(policy_changed)
    kopf.on.event("", "v1", "namespaces", registry=registry, id="namespace")(namespace_changed)
    return registry
