"""A tenant who may create and patch ExecutionTasks and ConfigMaps in its own namespace steers nothing else.

Each attack is one a tenant ran on a real cluster against the node agent (a root process beside the
kubelet) or the operator (which may delete Jobs the tenant may not). They run here against KMock with a
real agent and the real namespace and host executors, and are judged from the host: files on this
machine, the requests the API server received, objects left in it. Each has a positive control: the same
request where it is allowed does what it should, so a refusal cannot pass for a broken feature.

KMock does not bump ``metadata.generation`` on a spec patch or protect ``status`` as a subresource; the
tenant's patches below set the generation as the API server would, and never touch ``status``.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import pytest

from expbuild_isolation.agent.admission import AgentPolicy, NodeCapacity
from expbuild_isolation.api.task import IsolationLevel
from tests.controller.conftest import CONFIGMAPS, JOBS, TASKS, eventually, task_body

from .conftest import LEASES, needs_root, running_agent
from .test_agent import _phase, advertise, placed, sh

pytestmark = needs_root

HOST_ROOT = {"executor": "host", "minimum": "None", "seccompProfile": "Unconfined"}


@pytest.fixture
def marker():
    """A path on this machine's /tmp a hostile task tries to create; removed afterwards."""
    path = Path(f"/tmp/expbuild-tenant-{uuid.uuid4().hex[:10]}")
    yield path
    path.unlink(missing_ok=True)


def chain_config(worker_config, *chain: str, slots: int = 4):
    return worker_config.model_copy(update={"max_concurrent_tasks": slots, "executor": worker_config.executor
                                            .model_copy(update={"type": "auto", "chain": list(chain)})})


async def _finished(api, name):
    task = await api.get(f"{TASKS}/{name}")
    phase = ((task or {}).get("status") or {}).get("phase")
    return task if phase in ("Succeeded", "Failed", "Error", "TimedOut", "Cancelled") else None


# --- 1. the host executor: never offered by default, never root ---------------------------------------

async def test_an_agent_does_not_offer_or_run_the_host_executor_unless_an_admin_enables_it(
        api, kmock, worker_config, marker):
    config = chain_config(worker_config, "namespace", "host")  # the worker file names host; that is not enough
    async with running_agent(kmock, config, "n1"):
        lease = await eventually(lambda: api.get(f"{LEASES}/expbuild-agent-n1"), what="the agent's Lease")
        await api.create(TASKS, placed("rooted", "n1", command=["sh", "-c", f"id -u > {marker}"],
                                       isolation=HOST_ROOT, network={"policy": "Full"}, timeout="30s"))
        task = await eventually(lambda: _finished(api, "rooted"), timeout=30, what="the task to end")
    assert lease["metadata"]["annotations"]["expbuild.io/executors"] == "namespace"
    assert (task["status"]["phase"], task["status"]["reason"]) == ("Error", "ExecutorUnavailable")
    assert "not offered" in task["status"]["message"]
    assert not marker.exists()  # nothing ran on the node


async def test_an_enabled_host_executor_runs_as_run_as_user_never_as_root(api, kmock, worker_config, marker):
    config = chain_config(worker_config, "namespace", "host")
    async with running_agent(kmock, config, "n1", allow_host_executor=True,
                             policy=AgentPolicy(frozenset({"ci"}))):
        await eventually(lambda: api.get(f"{LEASES}/expbuild-agent-n1"), what="the agent's Lease")
        await api.create(TASKS, placed("as-nobody", "n1", command=["sh", "-c", f"id -u > {marker}"],
                                       isolation=HOST_ROOT, network={"policy": "Full"}, timeout="30s"))
        ok = await eventually(lambda: _finished(api, "as-nobody"), timeout=30, what="the task to end")
        root_marker = marker.with_suffix(".root")
        await api.create(TASKS, placed("as-root", "n1", command=["sh", "-c", f"touch {root_marker}"],
                                       isolation=HOST_ROOT | {"runAsUser": 0}, network={"policy": "Full"}))
        refused = await eventually(lambda: _finished(api, "as-root"), timeout=30, what="the task to end")
    assert (ok["status"]["phase"], ok["status"]["executor"]) == ("Succeeded", "host")  # the positive control
    assert marker.stat().st_uid == 65534 and marker.read_text().strip() == "65534"
    assert (refused["status"]["phase"], refused["status"]["reason"]) == ("Error", "IsolationUnavailable")
    assert "never runs a task as root" in refused["status"]["message"]
    assert not root_marker.exists()


async def test_the_host_executor_and_unconfined_need_the_namespaces_opt_in(api, kmock, worker_config, marker):
    config = chain_config(worker_config, "host")
    async with running_agent(kmock, config, "n1", allow_host_executor=True,
                             policy=AgentPolicy(frozenset({"trusted"}))):  # "ci" is not opted in
        await eventually(lambda: api.get(f"{LEASES}/expbuild-agent-n1"), what="the agent's Lease")
        await api.create(TASKS, placed("not-opted-in", "n1", command=["sh", "-c", f"touch {marker}"],
                                       isolation=HOST_ROOT, network={"policy": "Full"}))
        task = await eventually(lambda: _finished(api, "not-opted-in"), timeout=30, what="the task to end")
    assert (task["status"]["phase"], task["status"]["reason"]) == ("Error", "PolicyViolation")
    assert "namespace ci" in task["status"]["message"] and "--weak-isolation-namespace" in task["status"]["message"]
    assert not marker.exists()


async def test_the_operator_places_no_host_task_when_no_agent_offers_host(api, operator, kmock, worker_config):
    config = chain_config(worker_config, "namespace", "host")
    async with running_agent(kmock, config, "n1"):
        await eventually(lambda: api.get(f"{LEASES}/expbuild-agent-n1"), what="the agent's Lease")
        await api.create(TASKS, task_body("via-operator", isolation=HOST_ROOT, network={"policy": "Full"}))
        task = await eventually(lambda: _finished(api, "via-operator"), what="the task to end")
    assert (task["status"]["reason"], task["status"]["executor"]) == ("ExecutorUnavailable", "job")
    assert "no healthy host" in task["status"]["message"]


# --- 2. the spec patched after placement ---------------------------------------------------------------

async def test_a_spec_patched_after_placement_is_refused_not_run(api, kmock, worker_config, counting, marker):
    config = chain_config(worker_config, "namespace", slots=1)
    await api.create(TASKS, placed("busy", "n1", **sh("sleep 30")))
    async with running_agent(kmock, config, "n1", counting=counting) as agent:
        await eventually(lambda: _phase(api, "busy", "Running"), timeout=30, what="the first task Running")
        # Waiting for the slot: placed at generation 1. The tenant swaps its command, then its isolation.
        await api.create(TASKS, placed("swapped", "n1", **sh("echo placed")))
        await api.create(TASKS, placed("escalated", "n1", **sh("echo placed")))
        await asyncio.sleep(0.3)
        assert counting.runs == ["uid-busy"]
        await api.patch(f"{TASKS}/swapped", {"metadata": {"generation": 2},
                                             "spec": {"command": ["sh", "-c", "echo swapped"]}})
        await api.patch(f"{TASKS}/escalated", {"metadata": {"generation": 2}, "spec": {
            "command": ["sh", "-c", f"touch {marker}"], "isolation": HOST_ROOT, "network": {"policy": "Full"}}})
        await api.patch(f"{TASKS}/busy", {"spec": {"cancel": True}, "status": {"phase": "Cancelled"}})
        swapped = await eventually(lambda: _finished(api, "swapped"), timeout=30, what="swapped to end")
        escalated = await eventually(lambda: _finished(api, "escalated"), timeout=30, what="escalated to end")
        # The positive control: a placed task nobody touched runs on the freed slot.
        await api.create(TASKS, placed("untouched", "n1", **sh("echo ran")))
        untouched = await eventually(lambda: _finished(api, "untouched"), timeout=30, what="untouched to end")
        await eventually(lambda: agent.free_slots == 1, timeout=10, what="the slot freed")
    assert (swapped["status"]["phase"], swapped["status"]["reason"]) == ("Error", "SpecChanged")
    assert (escalated["status"]["phase"], escalated["status"]["reason"]) == ("Error", "SpecChanged")
    assert untouched["status"]["phase"] == "Succeeded" and "ran" in untouched["status"]["logs"]["stdoutTail"]
    assert counting.runs == ["uid-busy", "uid-untouched"]  # neither patched task reached an executor
    assert not marker.exists()


async def test_a_task_only_labelled_for_a_node_is_not_run_there(api, kmock, worker_config, counting):
    # The node label is what agents list by, and tenants can set labels; only status.node places a task.
    body = placed("self-placed", "n2", **sh("echo hi"))
    body["metadata"]["labels"]["expbuild.io/node"] = "n1"
    await api.create(TASKS, body)
    async with running_agent(kmock, worker_config, "n1", counting=counting):
        await asyncio.sleep(0.5)
    assert counting.runs == []
    assert (await api.get(f"{TASKS}/self-placed"))["status"]["phase"] == "Scheduled"


# --- 3. ConfigMap names ---------------------------------------------------------------------------------

async def test_a_config_map_name_cannot_reach_another_namespace(api, kmock, worker_config, counting):
    await api.create("/api/v1/namespaces/other/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "secret", "namespace": "other"},
        "data": {"token": "TENANT-B-SECRET-42"}})
    await api.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap",
                                  "metadata": {"name": "mine", "namespace": "ci"}, "data": {"a.txt": "MINE-OK"}})
    await api.create(TASKS, placed("steal", "n1", **sh("cat in/token; cat in/*"), inputs=[
        {"path": "in", "configMap": {"name": "../../other/configmaps/secret"}}]))
    await api.create(TASKS, placed("own", "n1", **sh("cat in/a.txt"), inputs=[
        {"path": "in", "configMap": {"name": "mine"}}]))
    async with running_agent(kmock, worker_config, "n1", counting=counting):
        steal = await eventually(lambda: _finished(api, "steal"), timeout=30, what="steal to end")
        own = await eventually(lambda: _finished(api, "own"), timeout=30, what="own to end")
    assert (steal["status"]["phase"], steal["status"]["reason"]) == ("Error", "InvalidTask")
    assert "not a Kubernetes object name" in steal["status"]["message"]
    assert "TENANT-B-SECRET-42" not in str(steal)
    assert not [r for r in list(kmock) if "/namespaces/other/" in r.url.path and r.method == "GET"]
    assert own["status"]["phase"] == "Succeeded" and "MINE-OK" in own["status"]["logs"]["stdoutTail"]
    assert counting.runs == ["uid-own"]


async def test_a_config_map_name_cannot_write_a_file_on_the_node(api, kmock, worker_config, counting):
    # The agent once wrote each ConfigMap to <tempdir>/<name>.yaml as root: a name climbing out of /tmp/x/
    # lands at the root of the node's file system, where a directory named like an API path may exist.
    other = f"evil-{uuid.uuid4().hex[:8]}"
    landing = Path("/") / other / "configmaps"
    landing.mkdir(parents=True)
    try:
        await api.create(f"/api/v1/namespaces/{other}/configmaps", {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": other},
            "data": {"k": "v"}})
        await api.create(TASKS, placed("plant", "n1", **sh("true"), inputs=[
            {"path": "in", "configMap": {"name": f"../../{other}/configmaps/x"}}]))
        async with running_agent(kmock, worker_config, "n1", counting=counting):
            task = await eventually(lambda: _finished(api, "plant"), timeout=30, what="plant to end")
        assert list(landing.iterdir()) == []
        assert (task["status"]["phase"], task["status"]["reason"]) == ("Error", "InvalidTask")
        assert counting.runs == []
    finally:
        shutil.rmtree(landing.parent)


# --- 4. more than the node has -------------------------------------------------------------------------

async def test_an_agent_refuses_a_task_bigger_than_its_node(api, kmock, worker_config, counting):
    await api.create(TASKS, placed("huge", "n1", **sh("true"), resources={"cpu": "512", "memory": "60Ti"}))
    await api.create(TASKS, placed("fits", "n1", **sh("true"), resources={"cpu": "1", "memory": "64Mi"}))
    async with running_agent(kmock, worker_config, "n1", counting=counting,
                             capacity=NodeCapacity(cpu_cores=2, memory_bytes=8 << 30)):
        lease = await eventually(lambda: api.get(f"{LEASES}/expbuild-agent-n1"), what="the agent's Lease")
        huge = await eventually(lambda: _finished(api, "huge"), timeout=30, what="huge to end")
        fits = await eventually(lambda: _finished(api, "fits"), timeout=30, what="fits to end")
    assert (huge["status"]["phase"], huge["status"]["reason"]) == ("Error", "ExceedsNodeCapacity")
    assert "spec.resources.cpu 512" in huge["status"]["message"]
    assert fits["status"]["phase"] == "Succeeded" and counting.runs == ["uid-fits"]
    assert lease["metadata"]["annotations"]["expbuild.io/capacity"] == f"cpu=2,memory={8 << 30}"


# --- 5. the operator deletes only what a task owns -----------------------------------------------------

def foreign_job(name: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": "ci", "uid": f"victim-{name}"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}}


async def test_deleting_or_cancelling_a_task_never_deletes_a_job_it_does_not_own(api, operator):
    await api.create(JOBS, foreign_job("xt-victimjob"))
    await api.create(TASKS, task_body("victimjob"))
    task = await eventually(lambda: _finished(api, "victimjob"), what="victimjob to end")
    assert task["status"]["reason"] == "NameConflict"
    await api.delete(f"{TASKS}/victimjob")
    await advertise(api, "n1", namespace=IsolationLevel.CONTAINER)  # placed on an agent: no Job of its own
    await api.create(JOBS, foreign_job("xt-victim2"))
    await api.create(TASKS, task_body("victim2", isolation={"executor": "namespace"}))
    await eventually(lambda: _phase(api, "victim2", "Scheduled"), what="victim2 placed")
    await api.patch(f"{TASKS}/victim2", {"spec": {"cancel": True}})
    await eventually(lambda: _phase(api, "victim2", "Cancelled"), what="victim2 Cancelled")
    # The positive control: a task's own Job goes when the task is cancelled.
    await api.create(TASKS, task_body("mine"))
    await eventually(lambda: api.get(f"{JOBS}/xt-mine"), what="its Job")
    await api.patch(f"{TASKS}/mine", {"spec": {"cancel": True}})
    await eventually(lambda: _phase(api, "mine", "Cancelled"), what="mine Cancelled")
    await eventually(lambda: _absent(api, f"{JOBS}/xt-mine"), what="its own Job deleted")
    await asyncio.sleep(0.5)
    assert await api.get(f"{JOBS}/xt-victimjob") is not None
    assert await api.get(f"{JOBS}/xt-victim2") is not None


async def _absent(api, path):
    return await api.get(path) is None
