"""Placement and lease rules, pure: no API server, no executors."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from expbuild_isolation.api.task import ExecutionTask, IsolationLevel
from expbuild_isolation.kube.config import OperatorConfig
from expbuild_isolation.kube.leases import (
    AgentAdvert, agent_lease_name, claim_holder, claim_name, fresh_agents, lease_is_fresh, parse_agent_lease,
    render_agent_lease, render_claim,
)
from expbuild_isolation.kube.placement import decide

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
CONFIG = OperatorConfig()
C, N = IsolationLevel.CONTAINER, IsolationLevel.NONE


def task(**spec) -> ExecutionTask:
    return ExecutionTask.model_validate({
        "apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask",
        "metadata": {"name": "t1", "namespace": "ci", "uid": "u-1"},
        "spec": {"image": "localhost/busybox:latest", "command": ["true"]} | spec})


def agent(node: str, free: int = 2, renewed: datetime = NOW, cpu: float = 2.0, memory: int = 8 << 30,
          **levels: IsolationLevel) -> AgentAdvert:
    levels = levels or {"namespace": C}
    return AgentAdvert(node=node, holder=node, executors=tuple(levels), levels=dict(levels), free_slots=free,
                       seccomp_profiles=("expbuild-default",), renew_time=renewed, duration_seconds=15,
                       cpu_cores=cpu, memory_bytes=memory)


# --- Leases ---------------------------------------------------------------------------------------------

def test_an_agent_lease_round_trips_its_advert():
    advert = agent("n1", free=3, namespace=C, host=N)
    lease = render_agent_lease(advert, "expbuild-system", NOW)
    assert lease["metadata"]["name"] == agent_lease_name("n1") == "expbuild-agent-n1"
    assert lease["metadata"]["namespace"] == "expbuild-system"
    assert lease["metadata"]["annotations"] == {
        "expbuild.io/executors": "namespace,host", "expbuild.io/isolation-levels": "namespace=Container,host=None",
        "expbuild.io/free-slots": "3", "expbuild.io/seccomp-profiles": "expbuild-default",
        "expbuild.io/capacity": "cpu=2,memory=8589934592"}
    assert lease["spec"] == {"holderIdentity": "n1", "leaseDurationSeconds": 15,
                             "renewTime": "2025-03-01T12:00:00.000000Z"}
    assert parse_agent_lease(lease) == advert


def test_a_lease_is_fresh_until_renew_time_plus_duration():
    lease = render_agent_lease(agent("n1"), "ns", NOW)
    assert lease_is_fresh(lease, NOW + timedelta(seconds=14.9))
    assert not lease_is_fresh(lease, NOW + timedelta(seconds=15))
    assert not lease_is_fresh({"metadata": {"name": "expbuild-agent-n2"}, "spec": {}}, NOW)  # never renewed
    assert [a.node for a in fresh_agents([lease, {"metadata": {"name": "other"}}], NOW)] == ["n1"]


def test_garbage_in_annotations_offers_nothing_rather_than_everything():
    lease = render_agent_lease(agent("n1"), "ns", NOW)
    lease["metadata"]["annotations"].update({"expbuild.io/isolation-levels": "namespace=Root,host",
                                             "expbuild.io/free-slots": "many"})
    advert = parse_agent_lease(lease)
    assert advert.levels == {} and advert.free_slots == 0 and advert.level_of("namespace") is None


def test_a_claim_is_a_deterministic_lease_owned_by_the_task():
    claim = render_claim(task(), "n1-agent", "n1", NOW)
    assert claim["metadata"]["name"] == claim_name("u-1") == "xt-claim-u-1"
    assert claim["metadata"]["namespace"] == "ci"
    assert claim["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert claim["metadata"]["labels"]["expbuild.io/node"] == "n1"
    assert claim_holder(claim) == "n1-agent"


# --- Placement ------------------------------------------------------------------------------------------

def test_executor_job_is_always_a_job():
    plan = decide(task(isolation={"executor": "job", "minimum": "Container"}), [agent("n1")], config=CONFIG)
    assert plan.kind == "job"


def test_auto_without_agent_only_needs_is_a_job():
    plan = decide(task(), [agent("n1")], config=CONFIG)
    assert (plan.kind, plan.node) == ("job", "")


@pytest.mark.parametrize("executor", ["namespace", "agent"])
def test_a_named_backend_goes_to_the_least_loaded_fresh_agent_offering_it(executor):
    agents = [agent("n1", free=1), agent("n2", free=4), agent("n3", free=9, host=N),
              agent("n4", free=20, renewed=NOW - timedelta(minutes=5))]
    plan = decide(task(isolation={"executor": executor}), agents, config=CONFIG, now=NOW)
    assert (plan.kind, plan.node, plan.backend, plan.reason) == ("agent", "n2", "namespace", "PlacedOnAgent")
    assert "n2" in plan.message and "namespace (Container)" in plan.message


def test_a_floor_no_agent_offers_is_an_error_naming_it():
    plan = decide(task(isolation={"executor": "agent", "minimum": "VM"}), [agent("n1"), agent("n2", host=N)],
                  config=CONFIG, now=NOW)
    assert (plan.kind, plan.reason) == ("error", "IsolationUnavailable")
    assert "isolation VM or above" in plan.message and "n1 offers namespace=Container" in plan.message
    assert "n2 offers host=None" in plan.message


def test_a_backend_no_agent_runs_is_an_error_naming_it():
    plan = decide(task(isolation={"executor": "docker"}), [agent("n1")], config=CONFIG, now=NOW)
    assert (plan.kind, plan.reason) == ("error", "ExecutorUnavailable")
    assert "docker at isolation Container" in plan.message and "n1 has no healthy docker" in plan.message


def test_no_fresh_agent_at_all_is_an_error():
    plan = decide(task(isolation={"executor": "namespace"}), [agent("n1", renewed=NOW - timedelta(hours=1))],
                  config=CONFIG, now=NOW)
    assert (plan.kind, plan.reason) == ("error", "NoAgent")
    assert "spec.isolation.executor is namespace" in plan.message


def test_auto_with_a_pids_limit_goes_to_an_agent():
    plan = decide(task(resources={"pids": 64}), [agent("n1")], config=CONFIG, now=NOW)
    assert (plan.kind, plan.node) == ("agent", "n1") and "spec.resources.pids (64)" in plan.message


def test_auto_with_a_pids_limit_and_no_agent_names_the_requirement():
    plan = decide(task(resources={"pids": 64}), [], config=CONFIG, now=NOW)
    assert plan.kind == "error" and "spec.resources.pids" in plan.message


def test_auto_with_disk_goes_to_an_agent_only_when_disk_is_a_hard_limit():
    assert decide(task(resources={"disk": "1Gi"}), [agent("n1")], config=CONFIG, now=NOW).kind == "job"
    hard = CONFIG.model_copy(update={"hard_disk_limits": True})
    assert decide(task(resources={"disk": "1Gi"}), [agent("n1")], config=hard, now=NOW).kind == "agent"


def test_placement_has_no_fallback_for_what_an_agent_cannot_fix():
    # A refused Job (admission, quota) or an unschedulable pod stays the Job path's: an agent would bypass it.
    assert decide(task(resources={"cpu": "512", "memory": "60Ti"}), [agent("n1")], config=CONFIG,
                  now=NOW).kind == "job"


def test_no_agent_gets_a_task_bigger_than_its_node():
    big = task(isolation={"executor": "namespace"}, resources={"cpu": "512", "memory": "1Gi"})
    plan = decide(big, [agent("n1", cpu=2), agent("n2", cpu=4)], config=CONFIG, now=NOW)
    assert (plan.kind, plan.reason) == ("error", "ExceedsNodeCapacity")
    assert "n1 has 2 cores" in plan.message and "n2 has 4 cores" in plan.message and "cpu 512" in plan.message
    fits = task(isolation={"executor": "namespace"}, resources={"cpu": "3", "memory": "9Gi"})
    assert decide(fits, [agent("n1", cpu=2), agent("n2", cpu=4)], config=CONFIG, now=NOW).reason == "ExceedsNodeCapacity"
    plan = decide(fits, [agent("n1", cpu=2), agent("n2", cpu=4, memory=16 << 30)], config=CONFIG, now=NOW)
    assert (plan.kind, plan.node) == ("agent", "n2")


def test_auto_on_an_agent_never_goes_below_the_floor():
    plan = decide(task(resources={"pids": 10}), [agent("n1", host=N)], config=CONFIG, now=NOW)
    assert (plan.kind, plan.reason) == ("error", "IsolationUnavailable")


def test_the_agent_command_needs_a_node_name(monkeypatch, capsys):
    from expbuild_isolation.cli import main
    monkeypatch.delenv("NODE_NAME", raising=False)
    assert main(["agent"]) == 2
    assert "--node or set NODE_NAME" in capsys.readouterr().err
