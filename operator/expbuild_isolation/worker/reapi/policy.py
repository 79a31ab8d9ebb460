"""The worker file's ``[policy]`` and ``[task_limits]`` for REAPI actions: the judge ``run`` and the agent use.

An action is judged as the ExecutionTask it amounts to (``task_of``): the container-image property is
``spec.image``; the isolation, executor, seccomp, network, cpu, memory, disk and pids properties are the task
fields of the same meaning; the action's timeout (else the worker's default) is ``spec.timeout``. An action
that sets no ``isolation`` is judged as asking for the worker file's ``isolation_minimum``, since that is
what it gets. No knob looks at argv or the environment, so the task carries only the program's name (an
action may hold more arguments than a manifest allows).

That task goes through ``worker.policy.local_judgement`` (``api.judge``) and ``worker.task_limits.over_caps``:
the same calls as ``expbuild-isolation run`` and the node agent, with messages naming the platform property
instead of the manifest field. A ``below_minimum = "Raise"`` floor raises the request's minimum, as for a task.

A refusal answers the action before its inputs are fetched or anything runs: gRPC status FAILED_PRECONDITION,
message ``<reason>: <the property, its value, the rule refusing it, what is accepted>``, the reason being
PolicyViolation, UntrustedImage or LimitTooLarge. Why that code: remote_execution.proto documents
FAILED_PRECONDITION for Execute as an error in setting up the action that the client may be able to fix, and
google.rpc.Code as the one not to retry until the state is fixed: here the action or the worker file must
change. No PreconditionFailure detail is attached, because a MISSING violation tells a client (Bazel) that
inputs are missing from the CAS and makes it upload and retry. Not INVALID_ARGUMENT: the action is valid
REAPI, which a worker under another policy could run. Not RESOURCE_EXHAUSTED: that reads as a quota to wait
for, which clients retry.
"""

from __future__ import annotations

import dataclasses

from pydantic import ValidationError

from ...api.judge import Judgement, Violation
from ...api.task import ExecutionTask
from ..config import WorkerConfig
from ..local import describe_task_error
from ..policy import local_judgement
from ..task_limits import REASON as LIMIT_TOO_LARGE
from ..task_limits import over_caps
from .action import ActionPlan, InvalidAction

# The manifest field a message names -> what it is in an action.
_NAMES = {"spec.image": "platform property container-image", "spec.isolation.minimum": "platform property isolation",
          "spec.isolation.executor": "platform property executor",
          "spec.isolation.seccompProfile": "platform property seccomp",
          "spec.network.policy": "platform property network", "spec.resources.cpu": "platform property cpu",
          "spec.resources.memory": "platform property memory", "spec.resources.disk": "platform property disk",
          "spec.resources.pids": "platform property pids", "spec.timeout": "Action.timeout"}
_FIRST_LONGEST = sorted(_NAMES, key=len, reverse=True)


class ActionRefused(Exception):
    """The worker file refuses the action; ``reason`` is PolicyViolation, UntrustedImage or LimitTooLarge."""

    def __init__(self, reason: str, message: str, plan: ActionPlan) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.plan = reason, plan


def task_of(plan: ActionPlan) -> ExecutionTask:
    """The ExecutionTask ``plan`` amounts to, in the fields a policy or a task limit judges."""
    request, properties = plan.request, plan.properties
    resources: dict[str, object] = {name: properties[name] for name in ("cpu", "memory", "disk")
                                    if properties.get(name)}
    if request.limits.max_processes is not None:
        resources["pids"] = request.limits.max_processes
    spec = {"image": request.image, "command": list(request.argv[:1]), "timeout": _duration(request.timeout_seconds),
            "resources": resources, "network": {"policy": request.limits.network.mode.value},
            "isolation": {"minimum": properties.get("isolation") or request.minimum_isolation.value,
                          "executor": plan.executor, "seccompProfile": request.seccomp_profile}}
    try:
        return ExecutionTask.model_validate({"metadata": {"name": request.task_id}, "spec": spec})
    except ValidationError as exc:
        raise InvalidAction("; ".join(_reworded(part, plan) for part in describe_task_error(exc).split("; "))) \
            from None


def judged(plan: ActionPlan, config: WorkerConfig) -> ActionPlan:
    """``plan`` as the worker file lets it run (the minimum raised where ``[policy]`` raises it).

    Raises ActionRefused naming every property the ``[policy]`` refuses, else every one over ``[task_limits]``.
    """
    task = task_of(plan)
    verdict = local_judgement(task, config)
    if verdict is not None and not verdict.allowed:
        raise ActionRefused(verdict.reason, "; ".join(str(_renamed(v, plan)) for v in verdict.violations), plan)
    too_large = over_caps(task.spec, config.task_limits)
    if too_large:
        raise ActionRefused(LIMIT_TOO_LARGE, "; ".join(_reworded(text, plan) for text in too_large), plan)
    return _raised(plan, task, verdict)


def _raised(plan: ActionPlan, task: ExecutionTask, verdict: Judgement | None) -> ActionPlan:
    if verdict is None or verdict.floor is None or verdict.floor.value <= plan.request.minimum_isolation:
        return plan
    request = dataclasses.replace(plan.request, minimum_isolation=verdict.floor.value)
    return dataclasses.replace(plan, request=request,
                               raised=_reworded(verdict.raised(task.spec.isolation.minimum), plan))


def _name(field: str, plan: ActionPlan) -> str:
    name = _NAMES.get(field, field)
    if field == "spec.isolation.minimum" and not plan.properties.get("isolation"):
        name += " (unset, so the worker file's isolation_minimum)"
    return name


def _renamed(violation: Violation, plan: ActionPlan) -> Violation:
    return dataclasses.replace(violation, field=_name(violation.field, plan))


def _reworded(text: str, plan: ActionPlan) -> str:
    """A message about a manifest field, told with the action's name for it."""
    for field in _FIRST_LONGEST:
        if text.startswith((f"{field}:", f"{field} ")):
            return _name(field, plan) + text[len(field):]
    return text


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
