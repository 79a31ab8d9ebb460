"""The ExecutionPolicies and namespace labels a component knows, and the judgement of a task by them. Pure.

The operator keeps a ``PolicyBook`` from its watches (policies and namespaces, seeded by one listing at
startup), so judging a task reads nothing from the API server; the node agent fills one from a listing
when it claims a task. Both judge with ``api.judge``.

Failing closed: a policy the models refuse (the CRD's schema lets through what only a program can check,
such as a CIDR with an octet above 255) is not ignored: every task of a namespace it may select is refused
until it is fixed. A task whose namespace the book has not seen yet cannot be judged (``UnknownNamespace``):
a watch event for it is on its way, and the caller tries again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from ..api.judge import Bound, Judgement, Violation, combine, judge, selecting
from ..api.policy import ExecutionPolicy, NamespaceSelector
from ..api.task import ExecutionTask


class UnknownNamespace(Exception):
    """The namespace's labels are not known yet, so which policies govern it is not known either."""


@dataclasses.dataclass(frozen=True)
class BrokenPolicy:
    name: str
    problem: str
    selector: NamespaceSelector | None  # None: not even its selector could be read

    def may_select(self, labels: dict[str, str]) -> bool:
        return self.selector is None or self.selector.selects(labels)


def _problem(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"] if not str(p).startswith(("function-", "union[")))
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)[:300]


class PolicyBook:
    def __init__(self, policies: Iterable[dict[str, Any]] = (), namespaces: Iterable[dict[str, Any]] = ()) -> None:
        self.policies: dict[str, ExecutionPolicy] = {}
        self.broken: dict[str, BrokenPolicy] = {}
        self.labels: dict[str, dict[str, str]] = {}
        for body in policies:
            self.set_policy(body)
        for body in namespaces:
            self.set_namespace(body)

    # --- what the watches say ------------------------------------------------------------------------------

    def set_policy(self, body: Mapping[str, Any]) -> None:
        name = str((body.get("metadata") or {}).get("name") or "")
        self.drop_policy(name)
        try:
            self.policies[name] = ExecutionPolicy.model_validate(dict(body))
        except ValidationError as exc:
            selector = ((body.get("spec") or {}) if isinstance(body.get("spec"), dict) else {}).get(
                "namespaceSelector") or {}
            try:
                readable: NamespaceSelector | None = NamespaceSelector.model_validate(selector)
            except ValidationError:
                readable = None
            self.broken[name] = BrokenPolicy(name, _problem(exc), readable)

    def drop_policy(self, name: str) -> None:
        self.policies.pop(name, None)
        self.broken.pop(name, None)

    def set_namespace(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        if meta.get("name"):
            self.labels[str(meta["name"])] = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}

    def drop_namespace(self, name: str) -> None:
        self.labels.pop(name, None)

    # --- what they mean for a task ---------------------------------------------------------------------------

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        if namespace not in self.labels:
            raise UnknownNamespace(f"namespace {namespace!r} has not been seen yet")
        return self.labels[namespace]

    def judge(self, task: ExecutionTask) -> Judgement:
        """``api.judge`` over the known policies, plus a refusal per broken policy that may govern the task."""
        labels = self.namespace_labels(task.metadata.namespace)
        verdict = judge(task, self.policies.values(), labels)
        broken = [Violation("metadata.namespace", repr(task.metadata.namespace), policy.name,
                            f"the policy is invalid, so its namespaces run nothing until it is fixed: "
                            f"{policy.problem}")
                  for policy in sorted(self.broken.values(), key=lambda p: p.name) if policy.may_select(labels)]
        if not broken:
            return verdict
        return dataclasses.replace(verdict, violations=(*verdict.violations, *broken),
                                   policies=tuple(sorted({*verdict.policies, *(v.policy for v in broken)})))

    def quota(self, namespace: str) -> Bound[int] | None:
        """The most unfinished tasks ``namespace`` may have (the smallest of its policies'), or None."""
        labels = self.labels.get(namespace)
        if labels is None:
            return None
        return combine(selecting(self.policies.values(), labels)).max_unfinished_tasks
