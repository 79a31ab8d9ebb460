"""What every handler shares: the operator's state (``OperatorState``, in kopf's memo), and small readers of a task's body."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import kopf
from pydantic import ValidationError

from ..api.task import ExecutionTask, Phase
from ..kube.config import OperatorConfig
from .cluster import Cluster
from .tenancy import Tenancy

EXECUTOR = "job"
REPORTING_COMPONENT = "expbuild-isolation"


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


async def remember_login(state: OperatorState, info: kopf.ConnectionInfo, *, relogin: Any = None
                         ) -> kopf.ConnectionInfo:
    """Give ``cluster`` the credentials kopf just logged in with (calls already under way finish on the old);
    ``relogin`` is how it logs in again by itself when a call meets a 401."""
    old, state.cluster = state.cluster, Cluster.from_connection(info, relogin=relogin)
    if old is not None:
        await old.close()
    return info


def now() -> datetime:
    return datetime.now(timezone.utc)


def task_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def readable(body: dict[str, Any]) -> ExecutionTask | None:
    """The task in ``body``, or None when the models refuse it (a handler failing on it would be retried for ever)."""
    try:
        return ExecutionTask.model_validate(body)
    except ValidationError:
        return None


def section(body: Any, name: str) -> dict[str, Any]:
    """``body[name]`` when it is a mapping, else {}: an object the models refuse may hold anything anywhere."""
    value = body.get(name) if isinstance(body, Mapping) else None
    return dict(value) if isinstance(value, Mapping) else {}


def phase_of(body: kopf.Body | dict[str, Any]) -> Phase:
    try:
        return Phase(section(body, "status").get("phase") or "Pending")
    except (ValueError, TypeError):  # not ours to judge here; the task's own handlers see the object
        return Phase.PENDING
