"""What every handler shares: the operator's state (``OperatorState``, in kopf's memo), and small readers of a task's body."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
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


class JobsFirst:
    """Tasks not yet at their Job go before a started task's status patch (and so before its Event).

    In a burst, a task's Job POST would otherwise queue behind the status patches, Events and watch events
    that the tasks seen before it bring: at ~3 ms of the operator's work per task, the 100th of 200 tasks
    created at once waited ~0.3 s for its Job, of which ~half was others' work that could wait. A status patch
    waits here, under its task's lock (so a Job or pod event cannot find the task still Pending), until no task
    is between its first event and its Job POST, or ``patience`` seconds; with nothing starting it does not wait.
    bench_operator, 200 created at once: creation -> Job p50 0.40 s -> 0.09-0.10 s. A patience of 0.25 s let
    the first patches go while a burst of 200 was still starting and gave p99 up to 1 s; 1 s did not.
    """

    def __init__(self, patience: float = 1.0) -> None:
        self.patience = patience
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def starting(self) -> Iterator[Callable[[], None]]:
        """Count one task as starting until the ``leave`` it yields is called, or the block ends."""
        self.count += 1
        self._idle.clear()
        left = False

        def leave() -> None:
            nonlocal left
            if not left:
                left, self.count = True, self.count - 1
                if not self.count:
                    self._idle.set()

        try:
            yield leave
        finally:
            leave()

    async def wait_turn(self) -> None:
        """Until no task is starting (never called by a task still counted itself: it would wait for itself)."""
        if self.count:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.patience)


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
    jobs_first: JobsFirst = field(default_factory=JobsFirst)

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
