"""The node agent judges a claimed task against the ExecutionPolicies as they are now.

The operator judged the task when it placed it; a policy may have changed since, or the task may have
slipped past the operator (an older operator, a task placed by hand). So before it runs anything the agent
lists the policies and reads the labels of the task's namespace (two reads per claimed task, which runs a
command anyway) and judges again with the same ``kube.policy`` book. Failing closed: when the policies
cannot be read, the task is not run unjudged.
"""

from __future__ import annotations

from ..api.judge import Judgement
from ..api.task import ExecutionTask
from ..kube.policy import PolicyBook, UnknownNamespace
from .admission import Refusal
from .api import AgentApi, ApiError, namespace_path, policies_path


async def judgement(api: AgentApi, task: ExecutionTask) -> Judgement | Refusal:
    """The policies' judgement of ``task``, or the refusal to run it when they cannot be read."""
    namespace = task.metadata.namespace
    try:
        try:
            policies = await api.items(policies_path())
        except ApiError as exc:
            if exc.status != 404:
                raise
            policies = []  # no ExecutionPolicy CRD: there can be no policy
        body = await api.get(namespace_path(namespace))
        return PolicyBook(policies, [body] if body else []).judge(task)
    except (ApiError, UnknownNamespace) as exc:
        return Refusal("PolicyUnavailable", f"the node agent cannot read the ExecutionPolicies of namespace "
                                            f"{namespace} ({exc}); the task is not run unjudged")


def refusal(verdict: Judgement | Refusal) -> Refusal | None:
    if isinstance(verdict, Refusal):
        return verdict
    return None if verdict.allowed else Refusal(verdict.reason, verdict.refusal())
