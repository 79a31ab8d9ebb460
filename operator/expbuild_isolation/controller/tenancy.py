"""Tenancy in the operator: the policies and namespace labels it knows, and the quota of unfinished tasks.

Nothing here reads the API server per task: at startup ``load`` lists the ExecutionPolicies, the
namespaces and the tasks once (before kopf starts watching, so no task is judged against an empty book),
and from then on the watches of policies and namespaces (``policy_event``, ``namespace_event``) and the
task events (``seen``) keep the book and the queues current.

A task starts only if its judgement allows it (``kube.policy``), and only when its namespace has a free
slot under the smallest ``maxUnfinishedTasks`` of its policies (``kube.quota``); otherwise it waits in
phase Pending, reason QuotaExceeded, and ``next_up`` hands it back, oldest first, when a slot frees.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from ..api.judge import Judgement
from ..api.policy import POLICY_KIND
from ..api.task import API_VERSION, ExecutionTask, IsolationLevel, Phase
from ..kube.policy import PolicyBook, UnknownNamespace
from ..kube.quota import Order, Quotas, namespace_of
from .cluster import ApiError, Cluster

LOG = logging.getLogger(__name__)
QUOTA_REASON = "QuotaExceeded"
HOLDING = frozenset({Phase.SCHEDULED, Phase.RUNNING})


def order_of(body: dict[str, Any]) -> Order:
    meta = _part(body, "metadata")
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


def _part(body: Any, name: str) -> dict[str, Any]:
    """``body[name]`` when it is a mapping, else {} (a task object the models refuse may hold anything)."""
    value = body.get(name) if isinstance(body, Mapping) else None
    return dict(value) if isinstance(value, Mapping) else {}


def _key(body: dict[str, Any]) -> str:
    meta = _part(body, "metadata")
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _phase(body: dict[str, Any]) -> Phase:
    try:
        return Phase(_part(body, "status").get("phase") or "Pending")
    except (ValueError, TypeError):
        return Phase.PENDING


@dataclass
class Tenancy:
    book: PolicyBook = field(default_factory=PolicyBook)
    quotas: Quotas = field(default_factory=Quotas)
    waiting: dict[str, dict[str, Any]] = field(default_factory=dict)  # task key -> its latest body

    async def load(self, api: Cluster, namespaces: list[str]) -> None:
        """One listing of policies, namespaces and tasks, before the watches start."""
        try:
            policies = await api.list_items(API_VERSION, POLICY_KIND)
        except ApiError as exc:
            if exc.status != 404:
                raise
            LOG.warning("the ExecutionPolicy CRD is not installed: no policies apply (%s)", exc)
            policies = []
        self.book = PolicyBook(policies, await api.list_items("v1", "Namespace"))
        tasks: list[dict[str, Any]] = []
        for namespace in namespaces or [None]:  # type: ignore[list-item]
            tasks += await api.list_items(API_VERSION, "ExecutionTask", namespace)
        for body in tasks:
            phase, reason = _phase(body), _part(body, "status").get("reason")
            if phase in HOLDING:
                self.quotas.started(_key(body))
            elif phase is Phase.PENDING and reason == QUOTA_REASON:
                self.quotas.wait(_key(body), order_of(body))
                self.waiting[_key(body)] = body
        LOG.info("tenancy: %d ExecutionPolicies, %d namespaces, %d tasks waiting for a slot",
                 len(self.book.policies) + len(self.book.broken), len(self.book.labels), len(self.waiting))

    # --- judging and admitting one task -----------------------------------------------------------------------

    def judge(self, task: ExecutionTask) -> Judgement:
        try:
            return self.book.judge(task)
        except UnknownNamespace as exc:  # its namespace's watch event is on its way
            raise kopf.TemporaryError(f"cannot judge the task against its ExecutionPolicies yet: {exc}",
                                      delay=1) from exc

    def admit(self, task: ExecutionTask, body: dict[str, Any], verdict: Judgement) -> bool:
        """Whether ``task`` may start now; if not, it waits in line (``next_up`` returns it later)."""
        limit = verdict.quota.value if verdict.quota is not None else None
        if self.quotas.try_start(task.key, order_of(body), limit):
            self.waiting.pop(task.key, None)
            return True
        self.waiting[task.key] = body
        return False

    def waiting_status(self, task: ExecutionTask, verdict: Judgement) -> dict[str, Any]:
        """The status patch of a task that waits for a slot."""
        namespace, quota = task.metadata.namespace, verdict.quota
        assert quota is not None
        ahead = self.quotas.waiting(namespace).index(task.key) if task.key in self.waiting else 0
        return {"phase": Phase.PENDING.value, "reason": QUOTA_REASON,
                "message": f"namespace {namespace} has {self.quotas.holding(namespace)} unfinished tasks, the most "
                           f"ExecutionPolicy {quota.policy} allows (maxUnfinishedTasks {quota.text}); this task "
                           f"starts when one finishes ({ahead} waiting ahead of it, oldest first)"}

    # --- what the watches say -----------------------------------------------------------------------------------

    def seen(self, key: str, body: dict[str, Any] | None, deleted: bool = False) -> bool:
        """A task event; True when it freed a slot in its namespace (then start ``next_up``)."""
        phase = _phase(body or {})
        if deleted or phase.finished:
            self.waiting.pop(key, None)
            return self.quotas.gone(key)
        if phase in HOLDING:
            self.quotas.started(key)
            self.waiting.pop(key, None)
        elif key in self.waiting and body is not None:
            self.waiting[key] = body
        return False

    def next_up(self, namespace: str) -> list[dict[str, Any]]:
        """The bodies of the waiting tasks of ``namespace`` that fit in its free slots, oldest first."""
        quota = self.book.quota(namespace)
        keys = self.quotas.next_up(namespace, quota.value if quota is not None else None)
        return [self.waiting[key] for key in keys if key in self.waiting]

    def waiting_namespaces(self) -> list[str]:
        return sorted({namespace_of(key) for key in self.waiting})

    def policy_event(self, body: dict[str, Any], type: str | None) -> None:
        name = str(_part(body, "metadata").get("name") or "")
        if type == "DELETED":
            self.book.drop_policy(name)
        else:
            self.book.set_policy(body)
            if name in self.book.broken:
                LOG.error("ExecutionPolicy %s is invalid; the tasks of its namespaces are refused until it is "
                          "fixed: %s", name, self.book.broken[name].problem)

    def namespace_event(self, body: dict[str, Any], type: str | None) -> None:
        name = str(_part(body, "metadata").get("name") or "")
        if type == "DELETED":
            self.book.drop_namespace(name)
        else:
            self.book.set_namespace(body)


def raised(task: ExecutionTask, verdict: Judgement) -> tuple[ExecutionTask, str]:
    """``task`` as it runs (its minimum raised to the policies' floor) and the note its status carries."""
    if verdict.floor is None:
        return task, ""
    asked: IsolationLevel = task.spec.isolation.minimum
    isolation = task.spec.isolation.model_copy(update={"minimum": verdict.floor.value})
    spec = task.spec.model_copy(update={"isolation": isolation})
    return task.model_copy(update={"spec": spec}), verdict.raised(asked)
