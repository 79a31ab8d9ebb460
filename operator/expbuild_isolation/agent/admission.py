"""What a node agent agrees to run: exactly what the operator placed, within what the node and its admin allow.

The agent runs as root beside the kubelet; a tenant who may create and patch ExecutionTasks must not be
able to steer it. Before a claimed task runs, ``refusal`` checks, from fields a tenant cannot write
(``status`` is a subresource tenants are not granted) and from the agent's own settings:

- the task was placed on this node (``status.node``; the ``expbuild.io/node`` label is only what agents
  list by, and a tenant can set labels);
- the spec is the one the operator placed (``metadata.generation`` equals the ``status.observedGeneration``
  written at placement; the CRD also freezes ``spec`` once created, this holds where that rule cannot run);
- the backend it names is one this agent advertises (the host executor is advertised only when an
  administrator enables it, ``--allow-host-executor``);
- ``seccompProfile: Unconfined`` only in namespaces an administrator opted in (``--weak-isolation-namespace``);
- cpu and memory within the node (a task the scheduler could not place does not get to bypass it here).

``floor`` raises the isolation minimum of tasks from namespaces without that opt-in to Container, so
``minimum: None`` cannot reach the host executor even where an administrator enabled it for others.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from ..api.task import ExecutionTask, IsolationLevel, Phase

AGENT_EXECUTORS = ("auto", "agent")  # "run it with whatever fits"; anything else names one backend
DEFAULT_FLOOR = IsolationLevel.CONTAINER


@dataclass(frozen=True)
class Refusal:
    reason: str   # status.reason and the Event's reason
    message: str


@dataclass(frozen=True)
class NodeCapacity:
    cpu_cores: float
    memory_bytes: int

    @classmethod
    def of_this_machine(cls) -> NodeCapacity:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return cls(cpu_cores=float(cores), memory_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


@dataclass(frozen=True)
class AgentPolicy:
    """What an administrator allows this agent to do beyond the safe default."""

    weak_isolation_namespaces: frozenset[str] = frozenset()  # may ask for minimum below Container, Unconfined

    def allows_weak_isolation(self, namespace: str) -> bool:
        return namespace in self.weak_isolation_namespaces or "*" in self.weak_isolation_namespaces


def floor(task: ExecutionTask, policy: AgentPolicy) -> IsolationLevel:
    """The isolation minimum the agent enforces: the task's own, raised to Container without the opt-in."""
    asked = task.spec.isolation.minimum
    if policy.allows_weak_isolation(task.metadata.namespace) or not asked < DEFAULT_FLOOR:
        return asked
    return DEFAULT_FLOOR


def refusal(task: ExecutionTask, *, node: str, advertised: Collection[str], policy: AgentPolicy,
            capacity: NodeCapacity) -> Refusal | None:
    """Why this agent must not run ``task`` as it stands, or None."""
    status, spec, meta = task.status, task.spec, task.metadata
    if status.phase is not Phase.SCHEDULED or status.node != node:
        return Refusal("NotPlacedHere", f"the task is labelled for node {node} but the operator placed it "
                                        f"{'on ' + status.node if status.node else 'nowhere'} "
                                        f"(status.node); only the operator's placement counts")
    if status.observed_generation is None or meta.generation != status.observed_generation:
        return Refusal("SpecChanged", f"the spec changed after the operator placed the task (generation "
                                      f"{meta.generation}, placed at {status.observed_generation}); a placed task "
                                      f"runs as it was placed: create a new task instead")
    backend = spec.isolation.executor
    if backend not in AGENT_EXECUTORS and backend not in advertised:
        offered = ", ".join(advertised) or "none"
        return Refusal("ExecutorUnavailable", f"spec.isolation.executor {backend} is not offered by the node agent "
                                              f"on {node} (it offers: {offered})")
    if spec.isolation.seccomp_profile == "Unconfined" and not policy.allows_weak_isolation(meta.namespace):
        return Refusal("PolicyViolation", f"seccompProfile Unconfined is not allowed for namespace "
                                          f"{meta.namespace} on node agents (an administrator opts a namespace "
                                          f"in with --weak-isolation-namespace)")
    cpu, memory = spec.resources.cpu_cores, spec.resources.memory_bytes
    if cpu is not None and cpu > capacity.cpu_cores:
        return Refusal("ExceedsNodeCapacity", f"spec.resources.cpu {spec.resources.cpu} is more than node {node} "
                                              f"has ({capacity.cpu_cores:g} cores)")
    if memory is not None and memory > capacity.memory_bytes:
        return Refusal("ExceedsNodeCapacity", f"spec.resources.memory {spec.resources.memory} is more than node "
                                              f"{node} has ({capacity.memory_bytes} bytes)")
    return None


def runnable(levels: Mapping[str, IsolationLevel], task: ExecutionTask) -> list[str]:
    """The advertised backends ``task`` may use, in the agent's order (one when it names a backend)."""
    backend = task.spec.isolation.executor
    return [name for name in levels if backend in AGENT_EXECUTORS or name == backend]
