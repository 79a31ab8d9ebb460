"""The finalizer is held only while a task is unfinished on a node agent: uninstalling never hangs.

A namespace or the CRD cannot be deleted while objects in it keep a finalizer nobody will remove (the
operator uninstalled). Garbage collection removes a Job task's objects through owner references, so such
tasks never hold one, and a task that is done never does.
"""

from __future__ import annotations

import asyncio

from expbuild_isolation.api.task import IsolationLevel
from tests.agent.test_agent import advertise

from expbuild_isolation.controller import lifecycle
from expbuild_isolation.controller.cluster import ApiError, Cluster

from .conftest import TASKS, eventually, running_operator, task_body
from .test_operator import _phase, job_pod, kubelet_completes

FINALIZER = "expbuild.io/finalizer"


async def _finalizers(api, name):
    return ((await api.get(f"{TASKS}/{name}")).get("metadata") or {}).get("finalizers") or []


async def _has(api, name):
    return FINALIZER in await _finalizers(api, name)


async def _lacks(api, name):
    return FINALIZER not in await _finalizers(api, name)


async def test_a_job_task_never_holds_the_finalizer(api, operator):
    await api.create(TASKS, task_body("plain"))
    await eventually(lambda: _phase(api, "plain", "Scheduled"), what="Scheduled")
    await api.create("/api/v1/namespaces/ci/pods",
                     await job_pod(api, "plain", {"running": {"startedAt": "2025-03-01T12:00:02Z"}}))
    await eventually(lambda: _phase(api, "plain", "Running"), what="Running")
    assert await _lacks(api, "plain")
    await kubelet_completes(api, "plain", "")
    await eventually(lambda: _phase(api, "plain", "Succeeded"), what="Succeeded")
    await asyncio.sleep(0.5)
    assert await _lacks(api, "plain")


async def test_an_agent_task_holds_it_only_until_it_finishes(api, operator, kmock):
    await advertise(api, "n1", namespace=IsolationLevel.CONTAINER)
    await api.create(TASKS, task_body("remote", isolation={"executor": "namespace"}))
    await eventually(lambda: _has(api, "remote"), what="the finalizer on the placed task")
    # The agent ends it (as agent/report.py writes it).
    await api.patch(f"{TASKS}/remote/status", {"status": {"phase": "Succeeded", "reason": "Completed"}})
    await eventually(lambda: _lacks(api, "remote"), what="the finalizer removed once finished")


async def test_a_finished_task_left_with_an_old_finalizer_is_released(api, operator_config, kmock):
    body = task_body("legacy")
    body["metadata"]["finalizers"] = [FINALIZER]  # written by an earlier version for every task
    body["status"] = {"phase": "Succeeded", "reason": "Completed"}
    await api.create(TASKS, body)
    async with running_operator(kmock, operator_config):
        await eventually(lambda: _lacks(api, "legacy"), what="the old finalizer removed")


async def test_deleting_an_unfinished_agent_task_cancels_it_first(api, operator):
    await advertise(api, "n1", namespace=IsolationLevel.CONTAINER)
    await api.create(TASKS, task_body("leaving", isolation={"executor": "namespace"}))
    await eventually(lambda: _has(api, "leaving"), what="the finalizer on the placed task")
    await api.delete(f"{TASKS}/leaving")
    await eventually(lambda: _gone(api, "leaving"), what="the task deleted")
    # the agent was told to stop (kopf posts events from a queue: wait for it)
    await eventually(lambda: "Cancelled" in {e["reason"] for e in api.events_for("leaving")},
                     what="the Cancelled event")
    await asyncio.sleep(0.5)  # (a second cancel, from a later event or a retry, would be posted by now)
    assert [e["reason"] for e in api.events_for("leaving")].count("Cancelled") == 1


async def _gone(api, name):
    return await api.get(f"{TASKS}/{name}") is None


async def test_another_controllers_finalizer_is_kept_when_ours_comes_and_goes(api, operator):
    await advertise(api, "n1", namespace=IsolationLevel.CONTAINER)
    body = task_body("shared", isolation={"executor": "namespace"})
    body["metadata"]["finalizers"] = ["example.com/theirs"]
    await api.create(TASKS, body)
    await eventually(lambda: _has(api, "shared"), what="our finalizer beside theirs")
    assert await _finalizers(api, "shared") == ["example.com/theirs", FINALIZER]
    await api.patch(f"{TASKS}/shared/status", {"status": {"phase": "Succeeded", "reason": "Completed"}})
    await eventually(lambda: _lacks(api, "shared"), what="ours removed once finished")
    assert await _finalizers(api, "shared") == ["example.com/theirs"]


async def test_a_pending_task_being_deleted_is_never_started(api, operator):
    body = task_body("doomed")
    body["metadata"]["deletionTimestamp"] = "2025-03-01T12:00:00Z"
    body["metadata"]["finalizers"] = ["example.com/theirs"]  # (what keeps a deleted object visible)
    await api.create(TASKS, body)
    await api.create(TASKS, task_body("control"))
    await eventually(lambda: _phase(api, "control", "Scheduled"), what="the control task Scheduled")
    await asyncio.sleep(0.3)
    assert not ((await api.get(f"{TASKS}/doomed")).get("status") or {}).get("phase")
    assert await api.get("/apis/batch/v1/namespaces/ci/jobs/xt-doomed") is None


async def test_a_deletion_whose_cancel_failed_is_finished_by_the_retry(api, operator_config, kmock, monkeypatch):
    """No later event comes for a deleted task the operator failed to cancel: its own retry must let it go."""
    monkeypatch.setattr(lifecycle, "RETRY_SECONDS", 0.2)
    original, refused = Cluster.patch_task_status, []

    async def busy_once(self, namespace, name, status):
        if status.get("phase") == "Cancelled" and not refused:
            refused.append(name)
            raise ApiError(503, "the API server is busy")
        return await original(self, namespace, name, status)

    monkeypatch.setattr(Cluster, "patch_task_status", busy_once)
    await advertise(api, "n1", namespace=IsolationLevel.CONTAINER)
    async with running_operator(kmock, operator_config):
        await api.create(TASKS, task_body("stubborn", isolation={"executor": "namespace"}))
        await eventually(lambda: _has(api, "stubborn"), what="the finalizer on the placed task")
        await api.delete(f"{TASKS}/stubborn")
        await eventually(lambda: _gone(api, "stubborn"), what="the task deleted after the retry")
    assert refused == ["stubborn"]


async def test_a_finalizer_write_that_lost_a_race_is_left_to_the_next_event(api, kmock):
    """A real API server answers a failed resourceVersion test with 422 (KMock with 500): a lost race, not an error.

    The other writer's change brings a newer event, and ``keep_finalizer`` computes the list again from it.
    """
    cluster = Cluster(str(kmock.url))
    try:
        await api.create(TASKS, task_body("raced"))
        body = await api.get(f"{TASKS}/raced")
        path = f"{TASKS}/raced"
        kmock["patch", path] << 422 << {"kind": "Status", "code": 422, "message": "the test operation failed"}
        assert await cluster.set_finalizer(body, FINALIZER, present=True) is False
    finally:
        await cluster.close()


async def test_a_finalizer_write_refused_otherwise_is_an_error(api, kmock):
    cluster = Cluster(str(kmock.url))
    try:
        await api.create(TASKS, task_body("refused"))
        body = await api.get(f"{TASKS}/refused")
        kmock["patch", f"{TASKS}/refused"] << 403 << {"kind": "Status", "code": 403, "message": "forbidden"}
        try:
            await cluster.set_finalizer(body, FINALIZER, present=True)
        except ApiError as exc:
            assert exc.status == 403
        else:
            raise AssertionError("a 403 was taken for a lost race")
    finally:
        await cluster.close()
