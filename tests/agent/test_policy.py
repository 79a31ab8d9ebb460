"""The node agent judges a claimed task against the ExecutionPolicies as they are when it claims it.

Tasks here are placed as the operator would have placed them before a policy existed (no operator runs),
so only the agent stands between them and the node. Each refusal is judged from the host: the executor
was never asked to run the task and the marker file its command would write does not exist. The control
runs the same task where no policy applies.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from expbuild_isolation.agent.admission import NodeCapacity

from tests.controller.conftest import POLICIES, TASKS, eventually
from tests.unit.policy_cases import VIOLATIONS

from .conftest import needs_root, running_agent
from .test_agent import placed

pytestmark = needs_root
BIG_NODE = NodeCapacity(cpu_cores=64.0, memory_bytes=1 << 40)  # the resource cases are the policy's, not the node's
# The agent's own admission refuses a backend it does not offer (host, here) before any policy is read;
# "executor-not-listed" below is the executor knob for the agent.
AGENT_CASES = {case: value for case, value in VIOLATIONS.items() if case != "executor"}
AGENT_CASES["executor-not-listed"] = ({"isolation": {"executors": ["auto", "job"]}}, {},
                                      "spec.isolation.executor", "'namespace'", "allowed: auto, job")


def policy(name: str, **spec):  # type: ignore[no-untyped-def]
    return {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionPolicy", "metadata": {"name": name},
            "spec": spec}


def marking_task(name: str, marker: Path, spec: dict) -> dict:
    """A task placed on n1 whose command leaves ``marker`` on this machine (the namespace executor binds it)."""
    isolation = {"executor": "namespace"} | spec.get("isolation", {})
    return placed(name, "n1", **(spec | {"command": ["/bin/sh", "-c", f"echo ran > {marker.name}"],
                                          "isolation": isolation, "outputs": {"paths": [marker.name]}}))


async def _ended(api, name):  # type: ignore[no-untyped-def]
    task = await api.get(f"{TASKS}/{name}")
    phase = ((task or {}).get("status") or {}).get("phase")
    return task if phase in ("Succeeded", "Failed", "Error", "TimedOut", "Cancelled") else None


@pytest.mark.parametrize("case", list(AGENT_CASES))
async def test_a_task_placed_before_a_policy_existed_is_refused_by_the_agent(api, kmock, worker_config, counting,
                                                                           case):
    rules, spec, field, value, _ = AGENT_CASES[case]
    await api.create(POLICIES, policy(f"policy-{case}", **rules))
    name = f"t-{uuid.uuid4().hex[:6]}"
    await api.create(TASKS, marking_task(name, Path(name), spec))
    async with running_agent(kmock, worker_config, "n1", counting=counting, capacity=BIG_NODE):
        done = await eventually(lambda: _ended(api, name), timeout=30, what=f"{case} to end")
    status = done["status"]
    assert (status["phase"], status["reason"]) == ("Error", "PolicyViolation"), status
    assert field in status["message"] and value in status["message"] and f"ExecutionPolicy policy-{case}" in \
        status["message"]
    assert counting.runs == [], "the executor was asked to run a refused task"


async def test_the_same_task_runs_where_no_policy_applies(api, kmock, worker_config, counting):
    await api.create(POLICIES, policy("elsewhere", namespaceSelector={"matchLabels": {"tenant": "other"}},
                                      isolation={"minimum": "VM"}))
    await api.create(TASKS, marking_task("control", Path("out.txt"), {}))
    async with running_agent(kmock, worker_config, "n1", counting=counting, capacity=BIG_NODE):
        done = await eventually(lambda: _ended(api, "control"), timeout=60, what="the control to end")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert len(counting.runs) == 1
    assert [o["path"] for o in done["status"]["outputs"]] == ["out.txt"]  # its command really ran


async def test_a_floor_raised_by_a_policy_is_the_agent_floor(api, kmock, worker_config, counting):
    await api.create(POLICIES, policy("vm-only", isolation={"minimum": "VM", "belowMinimum": "Raise"}))
    await api.create(TASKS, marking_task("raised", Path("out.txt"), {}))
    async with running_agent(kmock, worker_config, "n1", counting=counting, capacity=BIG_NODE):
        done = await eventually(lambda: _ended(api, "raised"), timeout=30, what="raised to end")
    status = done["status"]
    assert (status["phase"], status["reason"]) == ("Error", "IsolationUnavailable"), status
    assert "raised to VM" in status["message"]
    assert counting.runs == []  # the namespace executor (Container) is below the raised floor


async def test_policies_that_cannot_be_read_mean_nothing_runs(api, kmock, worker_config, counting):
    kmock["list", POLICIES] << 403 << {"kind": "Status", "message": "executionpolicies is forbidden"}
    await api.create(TASKS, marking_task("unjudged", Path("out.txt"), {}))
    async with running_agent(kmock, worker_config, "n1", counting=counting, capacity=BIG_NODE):
        done = await eventually(lambda: _ended(api, "unjudged"), timeout=30, what="unjudged to end")
    assert (done["status"]["phase"], done["status"]["reason"]) == ("Error", "PolicyUnavailable")
    assert "forbidden" in done["status"]["message"] and counting.runs == []
