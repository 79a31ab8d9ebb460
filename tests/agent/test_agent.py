"""The node agent's claim/run/report loop and the operator's placement, against KMock."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from expbuild_isolation import metrics
from expbuild_isolation.api.task import ExecutionTask, IsolationLevel
from expbuild_isolation.kube.leases import AgentAdvert, render_agent_lease
from expbuild_isolation.kube.status import status_from
from expbuild_isolation.selftest.host_side import processes_with
from expbuild_isolation.worker.config import WorkerConfig

from tests.controller.conftest import TASKS, eventually, task_body
from tests.controller.test_operator import job_pod, pod_body
from tests.executors.container_cases import left_by_a_killed_worker, running_of, usable

from .conftest import AGENTS_NS, CLAIMS, LEASES, needs_root, running_agent

SECRETS = "/var/run/secrets/kubernetes.io/serviceaccount"
DOCKER_IMAGE = "localhost/expbuild-busybox:latest"


async def _phase(api, name, phase):
    task = await api.get(f"{TASKS}/{name}")
    return task if task and (task.get("status") or {}).get("phase") == phase else None


def placed(name: str, node: str, **spec) -> dict:
    """A task as the operator leaves it after placing it on ``node`` (for tests without the operator)."""
    body = task_body(name, **spec)
    body["metadata"]["labels"] = {"expbuild.io/node": node}
    body["status"] = {"phase": "Scheduled", "reason": "PlacedOnAgent", "executor": "agent", "node": node,
                      "observedGeneration": body["metadata"]["generation"]}
    return body


def sh(script: str, **spec) -> dict:
    return {"command": ["/bin/sh", "-c", script], "isolation": {"executor": "namespace"}, "timeout": "60s"} | spec


async def advertise(api, node: str, seconds: int = 3600, **levels: IsolationLevel) -> None:
    advert = AgentAdvert(node=node, holder=node, executors=tuple(levels), levels=levels, free_slots=4,
                         duration_seconds=seconds)
    await api.create(LEASES, render_agent_lease(advert, AGENTS_NS, datetime.now(timezone.utc)))


def job_run_status_keys() -> set[str]:
    """The keys the operator writes for a task its Job ran to success (plus the log tail it adds)."""
    task = ExecutionTask.model_validate(task_body("ref"))
    report = '{"v":1,"exit":0,"cg":2,"cpu_us":500000,"mem":1048576,"trunc":0,"out":[[0,"%s",3,0]]}' % ("c" * 64)
    pod = pod_body("ref", {"terminated": {"exitCode": 0, "reason": "Completed", "message": report,
                                          "startedAt": "2025-03-01T12:00:02Z", "finishedAt": "2025-03-01T12:00:05Z"}},
                   phase="Succeeded")
    job = {"metadata": {"name": "xt-ref"}, "spec": {"template": {"spec": {}}},
           "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
    task = ExecutionTask.model_validate(task_body("ref", outputs={"paths": ["out/app"]}))
    return set(status_from(task, job, pod, datetime.now(timezone.utc))) | {"logs"}


@pytest.fixture
def planted_token():
    """A fake ServiceAccount token where the agent's own would be mounted, so 'absent inside' can fail."""
    token = Path(SECRETS) / "token"
    made = [p for p in [*reversed(token.parents), token] if not p.exists() and str(p).startswith("/var/run/")]
    token.parent.mkdir(parents=True, exist_ok=True)
    if not token.exists():
        token.write_text("FAKE-AGENT-TOKEN")
    assert token.read_text()  # the positive control: readable here, on the host
    yield token
    for path in reversed(made):
        (path.unlink if path == token else path.rmdir)()


@needs_root
async def test_a_namespace_task_placed_on_n1_is_claimed_run_and_reported(api, operator, kmock, worker_config,
                                                                         counting, tmp_path, planted_token):
    seccomp = tmp_path / "seccomp"
    async with running_agent(kmock, worker_config, "n1", counting=counting, seccomp_dir=seccomp):
        lease = await eventually(lambda: api.get(f"{LEASES}/expbuild-agent-n1"), what="the agent's Lease")
        await api.create(TASKS, task_body("ns-hello", **sh(
            f"test ! -e {SECRETS} && mkdir -p out && echo hi > out/greeting && echo done",
            outputs={"paths": ["out/greeting"]})))
        task = await eventually(lambda: _phase(api, "ns-hello", "Succeeded"), timeout=30, what="Succeeded")
        # Events go out from queues: wait for them before the agent stops, not after.
        await eventually(lambda: {"Scheduled", "Started", "Completed"}
                         <= {e.get("reason") for e in api.events_for("ns-hello")}, what="the events")
    status = task["status"]
    assert (status["executor"], status["isolationLevel"], status["node"]) == ("namespace", "Container", "n1")
    assert (status["exitCode"], status["reason"]) == (0, "Completed")
    assert status["outputs"][0]["path"] == "out/greeting" and status["outputs"][0]["sizeBytes"] == 3
    assert "done" in status["logs"]["stdoutTail"]  # and so the service account path was absent inside
    assert job_run_status_keys() <= set(status), job_run_status_keys() - set(status)
    assert [c["type"] for c in status["conditions"]] == ["Scheduled", "Started", "Finished"]
    assert task["metadata"]["labels"]["expbuild.io/node"] == "n1"
    assert len(counting.runs) == 1
    claim = await api.get(f"{CLAIMS}/xt-claim-uid-ns-hello")
    assert claim["spec"]["holderIdentity"] == "n1" and claim["metadata"]["ownerReferences"][0]["uid"] == "uid-ns-hello"
    notes = lease["metadata"]["annotations"]
    assert notes["expbuild.io/executors"] == "namespace"
    assert notes["expbuild.io/isolation-levels"] == "namespace=Container"
    assert notes["expbuild.io/seccomp-profiles"] == "expbuild-default,expbuild-strict"
    assert sorted(p.name for p in seccomp.iterdir()) == ["expbuild-default.json", "expbuild-strict.json"]
    reasons = {e.get("reason") for e in api.events_for("ns-hello")}
    assert {"Scheduled", "Started", "Completed"} <= reasons
    by = {e["reason"]: e["reportingComponent"] for e in api.events_for("ns-hello")}
    assert (by["Scheduled"], by["Started"]) == ("expbuild-isolation", "expbuild-isolation-agent")


@needs_root
async def test_two_agents_racing_for_the_same_tasks_run_each_exactly_once(api, kmock, worker_config, counting):
    names = [f"race-{i}" for i in range(4)]
    succeeded = metrics.TASKS_TOTAL.labels(phase="Succeeded", executor="namespace")
    before = succeeded._value.get()
    for name in names:
        await api.create(TASKS, placed(name, "n1", **sh("echo ran")))
    async with running_agent(kmock, worker_config, "n1", agent_id="n1-a", counting=counting), \
            running_agent(kmock, worker_config, "n1", agent_id="n1-b", counting=counting):
        for name in names:
            await eventually(lambda name=name: _phase(api, name, "Succeeded"), timeout=30, what=f"{name} Succeeded")
            await eventually(lambda name=name: "Completed" in {e.get("reason") for e in api.events_for(name)},
                             what=f"{name}'s Completed event")
    assert sorted(counting.runs) == sorted(f"uid-{name}" for name in names)  # each once, none twice
    # each run reported to its end (a poll seeing its own final status must not cut it short)
    await eventually(lambda: succeeded._value.get() - before == len(names), timeout=5, what="metrics")
    for name in names:
        assert "Completed" in {e.get("reason") for e in api.events_for(name)}
    tries = [r for r in list(kmock) if r.method == "POST" and r.url.path == CLAIMS]
    assert len(tries) >= len(names)


@needs_root
async def test_an_agent_restarted_mid_task_ends_it_agent_restarted_and_does_not_run_it_again(
        api, kmock, worker_config, counting):
    await api.create(TASKS, placed("long", "n1", **sh("sleep 30")))
    async with running_agent(kmock, worker_config, "n1", counting=counting):
        await eventually(lambda: _phase(api, "long", "Running"), timeout=30, what="Running")
    async with running_agent(kmock, worker_config, "n1", counting=counting):
        task = await eventually(lambda: _phase(api, "long", "Error"), timeout=10, what="Error")
        await asyncio.sleep(0.5)  # a few polls: nothing picks it up again
    assert task["status"]["reason"] == "AgentRestarted" and "not run again" in task["status"]["message"]
    assert counting.runs == ["uid-long"]
    assert (await api.get(f"{TASKS}/long"))["status"]["phase"] == "Error"


async def test_a_starting_agent_removes_the_container_a_killed_one_left_running(api, kmock, tmp_path):
    """An agent killed mid-task leaves its Docker container running; the next agent's start removes it."""
    worker_id = f"agent-{uuid.uuid4().hex[:8]}"
    config = WorkerConfig(work_dir=tmp_path / "work",
                          executor={"type": "docker", "docker": {"worker_id": worker_id, "image": DOCKER_IMAGE}})
    await usable("docker")
    left = left_by_a_killed_worker("docker", worker_id, DOCKER_IMAGE)
    try:
        assert running_of("docker", worker_id) == [left]   # the control: the container runs with no agent at all
        async with running_agent(kmock, config, "n1"):
            assert running_of("docker", worker_id) == [], "the started agent left its predecessor's container running"
    finally:
        subprocess.run(["docker", "rm", "-f", left], capture_output=True, check=False)


@needs_root
async def test_an_agent_whose_lease_expires_loses_its_running_task(api, operator, kmock, worker_config, counting):
    async with running_agent(kmock, worker_config, "n1", counting=counting, lease_seconds=3):
        await api.create(TASKS, task_body("orphan", **sh("sleep 30")))
        await eventually(lambda: _phase(api, "orphan", "Running"), timeout=30, what="Running")
    task = await eventually(lambda: _phase(api, "orphan", "Error"), timeout=10, what="Error")
    assert task["status"]["reason"] == "AgentLost"
    assert "n1" in task["status"]["message"] and "expbuild-agent-n1" in task["status"]["message"]
    assert counting.runs == ["uid-orphan"]
    # The periodic agent check posts the Event too (it runs outside any kopf handler).
    lost = await eventually(lambda: [e for e in api.events_for("orphan") if e["reason"] == "AgentLost"],
                            timeout=5, what="an AgentLost Event")
    assert lost[0]["type"] == "Warning" and "expbuild-agent-n1" in lost[0]["message"]


async def test_a_task_whose_agent_is_lost_before_it_started_is_placed_again(api, operator):
    await advertise(api, "n1", seconds=2, namespace=IsolationLevel.CONTAINER)
    await api.create(TASKS, task_body("moved", isolation={"executor": "namespace"}))
    # The operator patches the status first, then the label the agent lists by: wait for both.
    async def on_n1():
        task = await _phase(api, "moved", "Scheduled")
        return task if task and (task["metadata"].get("labels") or {}).get("expbuild.io/node") else None
    first = await eventually(on_n1, what="Scheduled and labelled")
    assert first["status"]["node"] == "n1" and first["metadata"]["labels"]["expbuild.io/node"] == "n1"
    await advertise(api, "n2", namespace=IsolationLevel.CONTAINER)

    async def on_n2():
        task = await api.get(f"{TASKS}/moved")
        return task if task["metadata"]["labels"].get("expbuild.io/node") == "n2" else None
    task = await eventually(on_n2, timeout=10, what="placed on n2")
    assert task["status"]["phase"] == "Scheduled" and task["status"]["node"] == "n2"


async def test_a_floor_no_agent_offers_ends_in_error_naming_it(api, operator):
    await advertise(api, "n1", namespace=IsolationLevel.CONTAINER, host=IsolationLevel.NONE)
    await api.create(TASKS, task_body("needs-vm", isolation={"executor": "agent", "minimum": "VM"}))
    await api.create(TASKS, task_body("needs-docker", isolation={"executor": "docker"}))
    vm = await eventually(lambda: _phase(api, "needs-vm", "Error"), what="Error")
    assert vm["status"]["reason"] == "IsolationUnavailable"
    assert "isolation VM or above" in vm["status"]["message"]
    assert "n1 offers namespace=Container" in vm["status"]["message"]
    docker = await eventually(lambda: _phase(api, "needs-docker", "Error"), what="Error")
    assert docker["status"]["reason"] == "ExecutorUnavailable" and "no healthy docker" in docker["status"]["message"]
    assert "expbuild.io/node" not in (vm["metadata"].get("labels") or {})


async def test_auto_with_a_pids_limit_and_no_agent_is_an_error_not_a_silent_job(api, operator):
    await api.create(TASKS, task_body("pids", resources={"pids": 64}))
    task = await eventually(lambda: _phase(api, "pids", "Error"), what="Error")
    assert task["status"]["reason"] == "NoAgent" and "spec.resources.pids" in task["status"]["message"]
    assert await api.get("/apis/batch/v1/namespaces/ci/jobs/xt-pids") is None


async def test_a_job_the_api_server_refuses_ends_rejected_once_and_never_goes_to_an_agent(api, operator, kmock):
    # An admission policy or a quota refused the Job: a node agent must not become the way around it.
    kmock["post /apis/batch/v1/namespaces/ci/jobs"] << 403 << {"kind": "Status", "message": "exceeded quota: jobs"}
    await advertise(api, "n1", namespace=IsolationLevel.CONTAINER)
    await api.create(TASKS, task_body("refused"))
    task = await eventually(lambda: _phase(api, "refused", "Error"), what="Error")
    assert task["status"]["reason"] == "Rejected"
    assert "exceeded quota: jobs" in task["status"]["message"] and "Job xt-refused" in task["status"]["message"]
    await asyncio.sleep(1.0)  # no retry loop: the same request would be refused again
    tries = [r for r in list(kmock) if r.method == "POST" and r.url.path == "/apis/batch/v1/namespaces/ci/jobs"]
    assert len(tries) == 1
    task = await api.get(f"{TASKS}/refused")
    assert "expbuild.io/node" not in (task["metadata"].get("labels") or {}) and task["status"]["executor"] == "job"
    assert [e["reason"] for e in api.events_for("refused") if e["type"] == "Warning"] == ["Rejected"]


async def test_an_unschedulable_task_stays_on_the_job_path_even_with_an_agent_alive(api, operator):
    # cpu 512 and 60Ti: the scheduler says no; an agent would run it with no scheduler and no quota.
    await advertise(api, "n1", namespace=IsolationLevel.CONTAINER)
    await api.create(TASKS, task_body("stuck", resources={"cpu": "512", "memory": "60Ti"}))
    await eventually(lambda: api.get("/apis/batch/v1/namespaces/ci/jobs/xt-stuck"), what="the Job")
    pod = await job_pod(api, "stuck", {"waiting": {"reason": "ContainerCreating"}}, phase="Pending")
    pod["spec"].pop("nodeName")
    pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                    "message": "0/3 nodes are available: 3 Insufficient cpu.",
                                    "lastTransitionTime": "2025-03-01T12:00:01Z"}]  # long ago
    await api.create("/api/v1/namespaces/ci/pods", pod)

    async def unschedulable():
        task = await api.get(f"{TASKS}/stuck")
        return task if (task.get("status") or {}).get("reason") == "Unschedulable" else None
    task = await eventually(unschedulable, what="reason Unschedulable")
    await asyncio.sleep(1.0)
    task = await api.get(f"{TASKS}/stuck")
    assert (task["status"]["phase"], task["status"]["executor"]) == ("Scheduled", "job")
    assert "Insufficient cpu" in task["status"]["message"]
    assert "expbuild.io/node" not in (task["metadata"].get("labels") or {})
    assert await api.get("/apis/batch/v1/namespaces/ci/jobs/xt-stuck") is not None


async def test_healthz_follows_the_lease_renewal_and_metrics_are_served(worker_config):
    from aiohttp.test_utils import TestClient, TestServer
    from expbuild_isolation.agent.api import AgentApi
    from expbuild_isolation.agent.node import AgentSettings, NodeAgent
    from expbuild_isolation.agent.run import health_app

    agent = NodeAgent(AgentApi("http://127.0.0.1:9"), worker_config,
                      AgentSettings(node="n1", namespace=AGENTS_NS, seccomp_dir=None))
    async with TestClient(TestServer(health_app(agent))) as client:
        assert (await client.get("/healthz")).status == 503
        agent.last_renewal = datetime.now(timezone.utc)
        assert (await client.get("/healthz")).status == 200
        text = await (await client.get("/metrics")).text()
        assert "expbuild_tasks_running" in text


@needs_root
async def test_cancelling_an_agent_run_task_stops_it_and_frees_the_slot(api, operator, kmock, worker_config, counting):
    async with running_agent(kmock, worker_config, "n1", counting=counting) as agent:
        await api.create(TASKS, task_body("stopme", **sh("sleep 30")))
        await eventually(lambda: _phase(api, "stopme", "Running"), timeout=30, what="Running")
        await api.patch(f"{TASKS}/stopme", {"spec": {"cancel": True}})
        task = await eventually(lambda: _phase(api, "stopme", "Cancelled"), timeout=10, what="Cancelled")
        await eventually(lambda: not agent.running, timeout=10, what="the run to stop")
        assert agent.free_slots == worker_config.max_concurrent_tasks
        await asyncio.sleep(0.3)  # the agent does not overwrite the operator's Cancelled
    assert (await api.get(f"{TASKS}/stopme"))["status"]["phase"] == "Cancelled"
    assert task["status"]["reason"] == "Cancelled" and counting.runs == ["uid-stopme"]


@needs_root
async def test_a_task_deleted_while_it_runs_on_an_agent_stops_there(api, kmock, worker_config, counting):
    # No operator, so no finalizer and no Cancelled status: the agent sees only the DELETED event.
    marker = f"3000.{uuid.uuid4().int % 10**9}"
    await api.create(TASKS, placed("vanishing", "n1", **sh(f"sleep {marker}")))
    async with running_agent(kmock, worker_config, "n1", counting=counting) as agent:
        await eventually(lambda: _phase(api, "vanishing", "Running"), timeout=30, what="Running")
        await eventually(lambda: processes_with(marker), timeout=10, what="its process (positive control)")
        await api.delete(f"{TASKS}/vanishing")
        await eventually(lambda: not agent.running, timeout=15, what="the run to stop")
    await eventually(lambda: not processes_with(marker), timeout=10, what="its processes to go")
