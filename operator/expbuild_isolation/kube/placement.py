"""Where a task runs: a Kubernetes Job, a node agent, or nowhere (and why). Pure.

``isolation.executor``:

- ``job``: always a Job.
- ``agent``, ``namespace``, ``docker``, ``podman``, ``host``: a fresh agent
  offering that backend (``agent``: any backend) at the task's isolation floor
  or above; the least loaded one (most free slots, then node name). None: an
  error naming what was missing.
- ``auto``: a Job, unless the task needs what only an agent can give
  (``spec.resources.pids``; ``spec.resources.disk`` when the operator treats
  disk as a hard limit). Then an agent as above, or an error naming the
  requirement and what no agent offers.

What an agent could not fix is never sent to one: a Job the API server
refused (an admission policy, a quota) or a pod the scheduler cannot place (no
node has the cpu or memory) would only bypass that decision on a node agent.
Those tasks end ``Error/Rejected`` or stay ``Unschedulable`` on the Job path,
where the Job's deadline ends them. An agent is chosen only if its node can
hold the task's cpu and memory (``AgentAdvert.capacity``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from ..api.task import ExecutionTask, IsolationLevel
from .config import OperatorConfig
from .leases import AgentAdvert

AGENT_BACKENDS = ("namespace", "docker", "podman", "host")


@dataclass(frozen=True)
class Plan:
    kind: Literal["job", "agent", "error"]
    node: str = ""
    reason: str = ""       # machine-readable, becomes status.reason / the Event reason
    message: str = ""      # what was decided and why, for status.message / the Event
    backend: str = ""      # agent plans: the backend the chosen agent offers (it may still pick another that fits)


def agent_only_requirements(task: ExecutionTask, config: OperatorConfig) -> list[str]:
    """What ``task`` asks for that the Job path cannot enforce."""
    needs = []
    if task.spec.resources.pids is not None:
        needs.append(f"spec.resources.pids ({task.spec.resources.pids}) needs a node agent: a Job cannot limit "
                     f"processes per task")
    if task.spec.resources.disk is not None and config.hard_disk_limits:
        needs.append(f"spec.resources.disk ({task.spec.resources.disk}) is a hard limit here and needs a node "
                     f"agent: a Job's emptyDir only evicts afterwards")
    return needs


def decide(task: ExecutionTask, agents: Sequence[AgentAdvert], *, config: OperatorConfig,
           now: datetime | None = None) -> Plan:
    """The plan for ``task`` given the agents' adverts (only fresh ones count when ``now`` is given)."""
    if now is not None:
        agents = [agent for agent in agents if agent.is_fresh(now)]
    executor = task.spec.isolation.executor
    if executor == "job":
        return Plan("job", reason="JobRequested", message="spec.isolation.executor is job")
    if executor == "agent":
        return _on_agent(task, agents, None, "spec.isolation.executor is agent")
    if executor in AGENT_BACKENDS:
        return _on_agent(task, agents, executor, f"spec.isolation.executor is {executor}")
    needs = agent_only_requirements(task, config)
    if not needs:
        return Plan("job", reason="JobPath", message="auto: the Job path can serve this task")
    return _on_agent(task, agents, None, "; ".join(needs))


def _on_agent(task: ExecutionTask, agents: Sequence[AgentAdvert], backend: str | None, why: str) -> Plan:
    floor = task.spec.isolation.minimum
    wanted = f"{backend} at isolation {floor.value} or above" if backend else f"isolation {floor.value} or above"
    if not agents:
        return Plan("error", reason="NoAgent",
                    message=f"{why}, but no node agent is alive to offer {wanted} (no fresh agent Lease)")
    choices: list[tuple[int, str, str, IsolationLevel]] = []
    seen: list[str] = []
    below_floor = too_small = False
    for agent in agents:
        small = agent.too_small_for(task.spec.resources.cpu_cores, task.spec.resources.memory_bytes)
        if small:
            seen.append(small)
            too_small = True
            continue
        backends = [backend] if backend else list(agent.executors)
        offered = []
        for name in backends:
            level = agent.level_of(name)
            if level is None:
                continue
            offered.append(f"{name}={level.value}")
            if not level < floor:  # (>= would compare the str values)
                choices.append((-agent.free_slots, agent.node, name, level))
            else:
                below_floor = True
        seen.append(f"{agent.node} offers {', '.join(offered)}" if offered
                    else f"{agent.node} has no healthy {backend or 'backend'}")
    if not choices:
        reason = ("IsolationUnavailable" if below_floor else "ExceedsNodeCapacity" if too_small
                  else "ExecutorUnavailable")
        if too_small:
            res = task.spec.resources
            asked = ", ".join(f"{key} {value}" for key, value in (("cpu", res.cpu), ("memory", res.memory)) if value)
            wanted += f" with room for {asked}"
        return Plan("error", reason=reason,
                    message=f"{why}, but no fresh node agent offers {wanted} ({'; '.join(sorted(seen))})")
    _, node, name, level = min(choices)
    return Plan("agent", node=node, backend=name, reason="PlacedOnAgent",
                message=f"{why}: the node agent on {node} offers {name} ({level.value})")
