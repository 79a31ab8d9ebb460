"""Node agents' Leases and task claims, as plain dicts (coordination.k8s.io/v1 Lease).

An agent advertises itself with one Lease per node, ``expbuild-agent-<node>``
in the operator's namespace, renewed every few seconds. What it offers rides
in annotations so that ``kubectl get lease -o yaml`` shows it:

``expbuild.io/executors``
    healthy backends, comma-separated (``namespace,host``)
``expbuild.io/isolation-levels``
    the level each of them gives, ``backend=Level`` pairs (``namespace=Container,host=None``)
``expbuild.io/free-slots``
    how many more tasks it would start now
``expbuild.io/seccomp-profiles``
    profiles installed in the kubelet's seccomp directory (only once the files exist)
``expbuild.io/capacity``
    what the node has for one task, ``cpu=<cores>,memory=<bytes>``: the operator places no task there
    that asks for more (and the agent refuses one)

A task is run by exactly one agent because running starts with creating its
claim, a Lease named ``xt-claim-<task uid>`` in the task's namespace, owned by
the task; the API server refuses a second create with 409 AlreadyExists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ..api.task import ExecutionTask, IsolationLevel
from .names import MANAGED_BY, TASK_NAME_ANNOTATION, owner_reference
from .status import parse_time

LEASE_API_VERSION = "coordination.k8s.io/v1"
AGENT_LABEL = "expbuild.io/agent"           # on agent Leases: the node; the operator lists by it
NODE_LABEL = "expbuild.io/node"             # on tasks placed on an agent, and on their claims
CLAIMED_BY_LABEL = "expbuild.io/claimed-by"  # on claims: the agent id
EXECUTORS_ANNOTATION = "expbuild.io/executors"
LEVELS_ANNOTATION = "expbuild.io/isolation-levels"
FREE_SLOTS_ANNOTATION = "expbuild.io/free-slots"
SECCOMP_ANNOTATION = "expbuild.io/seccomp-profiles"
CAPACITY_ANNOTATION = "expbuild.io/capacity"
DEFAULT_LEASE_SECONDS = 15


def label_value(value: str) -> str:
    """A label value (63 chars, alphanumeric ends); node names are DNS subdomains and usually fit."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:63].strip("-_.")
    return safe or "unknown"


def agent_lease_name(node: str) -> str:
    return f"expbuild-agent-{node}"


def claim_name(task_uid: str) -> str:
    return f"xt-claim-{task_uid}"


def micro_time(value: datetime) -> str:
    """Kubernetes MicroTime (what Lease renewTime and acquireTime carry)."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class AgentAdvert:
    """What one node's agent offers, as read from (or written to) its Lease."""

    node: str
    holder: str = ""
    executors: tuple[str, ...] = ()
    levels: dict[str, IsolationLevel] = field(default_factory=dict)  # backend -> level it gives
    free_slots: int = 0
    seccomp_profiles: tuple[str, ...] = ()
    renew_time: datetime | None = None
    duration_seconds: int = DEFAULT_LEASE_SECONDS
    cpu_cores: float | None = None      # the node's capacity for one task; None: not advertised
    memory_bytes: int | None = None

    def too_small_for(self, cpu_cores: float | None, memory_bytes: int | None) -> str:
        """Why a task asking for this much does not fit this node ("" when it does, or when unknown)."""
        if cpu_cores is not None and self.cpu_cores is not None and cpu_cores > self.cpu_cores:
            return f"{self.node} has {self.cpu_cores:g} cores"
        if memory_bytes is not None and self.memory_bytes is not None and memory_bytes > self.memory_bytes:
            return f"{self.node} has {self.memory_bytes} bytes of memory"
        return ""

    def level_of(self, backend: str) -> IsolationLevel | None:
        return self.levels.get(backend) if backend in self.executors else None

    def is_fresh(self, now: datetime) -> bool:
        return self.renew_time is not None and now < self.renew_time + timedelta(seconds=self.duration_seconds)


def render_agent_lease(advert: AgentAdvert, namespace: str, now: datetime) -> dict[str, Any]:
    """The node's Lease carrying ``advert``, renewed at ``now``."""
    levels = ",".join(f"{name}={advert.levels[name].value}" for name in advert.executors if name in advert.levels)
    return {
        "apiVersion": LEASE_API_VERSION, "kind": "Lease",
        "metadata": {"name": agent_lease_name(advert.node), "namespace": namespace,
                     "labels": {AGENT_LABEL: label_value(advert.node), **MANAGED_BY},
                     "annotations": {EXECUTORS_ANNOTATION: ",".join(advert.executors),
                                     LEVELS_ANNOTATION: levels,
                                     FREE_SLOTS_ANNOTATION: str(max(0, advert.free_slots)),
                                     SECCOMP_ANNOTATION: ",".join(advert.seccomp_profiles),
                                     CAPACITY_ANNOTATION: _capacity(advert)}},
        "spec": {"holderIdentity": advert.holder or advert.node, "leaseDurationSeconds": advert.duration_seconds,
                 "renewTime": micro_time(now)},
    }


def _capacity(advert: AgentAdvert) -> str:
    parts = {"cpu": advert.cpu_cores, "memory": advert.memory_bytes}
    return ",".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                    for key, value in parts.items() if value is not None)


def _parse_capacity(value: str | None) -> tuple[float | None, int | None]:
    pairs = dict(pair.partition("=")[::2] for pair in _split(value))
    try:
        cpu = float(pairs["cpu"]) if "cpu" in pairs else None
    except ValueError:
        cpu = 0.0  # unreadable: offers nothing rather than everything
    try:
        memory = int(pairs["memory"]) if "memory" in pairs else None
    except ValueError:
        memory = 0
    return cpu, memory


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


def parse_agent_lease(lease: dict[str, Any]) -> AgentAdvert | None:
    """The advertisement in an agent Lease, or None when it is not one (no node, wrong name)."""
    meta = lease.get("metadata") or {}
    name = meta.get("name") or ""
    if not name.startswith("expbuild-agent-"):
        return None
    annotations = meta.get("annotations") or {}
    spec = lease.get("spec") or {}
    levels: dict[str, IsolationLevel] = {}
    for pair in _split(annotations.get(LEVELS_ANNOTATION)):
        backend, _, level = pair.partition("=")
        try:
            levels[backend.strip()] = IsolationLevel(level.strip())
        except ValueError:
            continue  # an unknown level offers nothing rather than everything
    try:
        free = int(annotations.get(FREE_SLOTS_ANNOTATION) or 0)
    except ValueError:
        free = 0
    try:
        duration = int(spec.get("leaseDurationSeconds") or DEFAULT_LEASE_SECONDS)
    except (TypeError, ValueError):
        duration = DEFAULT_LEASE_SECONDS
    cpu, memory = _parse_capacity(annotations.get(CAPACITY_ANNOTATION))
    return AgentAdvert(node=name.removeprefix("expbuild-agent-"), holder=spec.get("holderIdentity") or "",
                       executors=_split(annotations.get(EXECUTORS_ANNOTATION)), levels=levels, free_slots=free,
                       seccomp_profiles=_split(annotations.get(SECCOMP_ANNOTATION)),
                       renew_time=parse_time(spec.get("renewTime")), duration_seconds=duration,
                       cpu_cores=cpu, memory_bytes=memory)


def lease_is_fresh(lease: dict[str, Any], now: datetime) -> bool:
    """True while ``renewTime + leaseDurationSeconds`` is still ahead of ``now``."""
    advert = parse_agent_lease(lease)
    return advert is not None and advert.is_fresh(now)


def fresh_agents(leases: list[dict[str, Any]], now: datetime) -> list[AgentAdvert]:
    adverts = (parse_agent_lease(lease) for lease in leases)
    return [advert for advert in adverts if advert is not None and advert.is_fresh(now)]


def render_claim(task: ExecutionTask, agent_id: str, node: str, now: datetime) -> dict[str, Any]:
    """The object whose creation makes ``agent_id`` the only runner of ``task`` (409 for everyone else)."""
    meta = {"name": claim_name(task.metadata.uid), "namespace": task.metadata.namespace,
            "labels": {NODE_LABEL: label_value(node), CLAIMED_BY_LABEL: label_value(agent_id), **MANAGED_BY},
            "annotations": {TASK_NAME_ANNOTATION: task.metadata.name},
            "ownerReferences": [owner_reference(task)]}
    return {"apiVersion": LEASE_API_VERSION, "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": agent_id, "acquireTime": micro_time(now), "renewTime": micro_time(now)}}


def claim_holder(claim: dict[str, Any] | None) -> str:
    return ((claim or {}).get("spec") or {}).get("holderIdentity") or ""
