"""The node agent judges a claimed task against the ExecutionPolicies as they are when it claims it.

Tasks here are placed as the operator would have placed them before a policy existed (no operator runs),
so only the agent stands between them and the node. Each refusal is judged from the host: the executor
was never asked to run the task and the marker file its command would write does not exist. The control
runs the same task where no policy applies.
"""

from __future__ import annotations

import json
import logging
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


async def test_a_task_the_agent_ran_is_charged_to_its_namespace_and_audited_with_its_policy(
        api, kmock, worker_config, counting, caplog):
    from prometheus_client import REGISTRY

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"namespace": "ci"}) or 0.0

    caplog.set_level(logging.INFO, logger="expbuild.audit")
    await api.create(POLICIES, policy("team-ci", maxResources={"timeout": "1h"}))
    busy = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; echo done > out.txt"
    await api.create(TASKS, placed("busy", "n1", command=["/bin/sh", "-c", busy], isolation={"executor": "namespace"},
                                   outputs={"paths": ["out.txt"]}))
    names = ("expbuild_namespace_cpu_seconds_total", "expbuild_namespace_memory_byte_seconds_total")
    before = [sample(name) for name in names]
    async with running_agent(kmock, worker_config, "n1", counting=counting, capacity=BIG_NODE):
        done = await eventually(lambda: _ended(api, "busy"), timeout=60, what="busy to end")

        async def charged() -> list[float] | None:  # (charged right after the final status is written)
            amounts = [sample(name) - was for name, was in zip(names, before)]
            return amounts if all(amounts) else None
        amounts = await eventually(charged, timeout=10, what="the namespace to be charged")
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    cpu, peak = status["stats"]["cpuTimeSeconds"], status["stats"]["peakMemoryBytes"]
    assert cpu > 0.05 and peak > 0  # measured from the task's cgroup, not claimed by the task
    assert amounts == pytest.approx([cpu, peak * status["durationSeconds"]])
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "expbuild.audit"]
    start = next(line for line in lines if line["event"] == "start" and line["task"] == "ci/busy")
    assert start["namespace"] == "ci" and start["policies"] == ["team-ci"] and start["executor"] == "namespace"
