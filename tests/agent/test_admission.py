"""What a node agent agrees to run, pure: the placement it checks and the floor it raises."""

from __future__ import annotations

from pathlib import Path

from expbuild_isolation.agent.admission import AgentPolicy, NodeCapacity, floor, refusal
from expbuild_isolation.api.task import ExecutionTask, IsolationLevel
from expbuild_isolation.worker.local import request_for

NODE = NodeCapacity(cpu_cores=4, memory_bytes=8 << 30)


def placed(generation: int = 1, observed: int | None = 1, node: str = "n1", **spec) -> ExecutionTask:
    return ExecutionTask.model_validate({
        "metadata": {"name": "t", "namespace": "ci", "uid": "u", "generation": generation},
        "spec": {"command": ["true"]} | spec,
        "status": {"phase": "Scheduled", "node": node, "observedGeneration": observed}})


def why(task: ExecutionTask, policy: AgentPolicy = AgentPolicy(), advertised=("namespace",)) -> str:
    refused = refusal(task, node="n1", advertised=advertised, policy=policy, capacity=NODE)
    return refused.reason if refused else ""


def test_an_agent_runs_only_what_was_placed_on_it_as_it_was_placed():
    assert why(placed()) == ""
    assert why(placed(node="n2")) == "NotPlacedHere"
    assert why(placed(generation=2, observed=1)) == "SpecChanged"
    assert why(placed(observed=None)) == "SpecChanged"  # never placed by the operator


def test_an_agent_runs_only_the_backends_it_advertises():
    assert why(placed(isolation={"executor": "namespace"})) == ""
    assert why(placed(isolation={"executor": "agent"})) == ""
    assert why(placed(isolation={"executor": "host", "minimum": "None"})) == "ExecutorUnavailable"
    assert why(placed(isolation={"executor": "job"})) == "ExecutorUnavailable"


def test_unconfined_needs_the_namespace_opted_in():
    unconfined = placed(isolation={"minimum": "None", "seccompProfile": "Unconfined"})
    assert why(unconfined) == "PolicyViolation"
    assert why(unconfined, AgentPolicy(frozenset({"ci"}))) == ""
    assert why(unconfined, AgentPolicy(frozenset({"*"}))) == ""


def test_cpu_and_memory_beyond_the_node_are_refused():
    assert why(placed(resources={"cpu": "4", "memory": "8Gi"})) == ""
    assert why(placed(resources={"cpu": "4.5"})) == "ExceedsNodeCapacity"
    assert why(placed(resources={"memory": "9Gi"})) == "ExceedsNodeCapacity"


def test_the_floor_is_container_unless_the_namespace_opted_in_and_never_lowers():
    none = placed(isolation={"minimum": "None"})
    assert floor(none, AgentPolicy()) is IsolationLevel.CONTAINER
    assert floor(none, AgentPolicy(frozenset({"ci"}))) is IsolationLevel.NONE
    assert floor(placed(isolation={"minimum": "VM"}), AgentPolicy()) is IsolationLevel.VM
    request = request_for(none, Path("/nonexistent"), floor=floor(none, AgentPolicy()))
    assert request.minimum_isolation is IsolationLevel.CONTAINER
    assert request_for(placed(isolation={"minimum": "VM"}), Path("/x"),
                       floor=IsolationLevel.CONTAINER).minimum_isolation is IsolationLevel.VM
