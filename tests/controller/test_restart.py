from __future__ import annotations

from .conftest import JOBS, PODS, TASKS, eventually, running_operator, task_body
from .test_operator import _phase, job_pod


async def test_a_restarted_operator_adopts_instead_of_duplicating(kmock, api, operator_config):
    async with running_operator(kmock, operator_config):
        await api.create(TASKS, task_body("survivor"))
        await eventually(lambda: _phase(api, "survivor", "Scheduled"), what="Scheduled")
        # kopf posts events from a queue: leaving before it drains would lose the one this test counts.
        await eventually(lambda: _scheduled_events(api, "survivor"), what="the Scheduled event")
    # While the operator is down, the pod starts and another task arrives.
    await api.create(PODS, await job_pod(api, "survivor", {"running": {"startedAt": "2025-03-01T12:00:02Z"}}))
    await api.create(TASKS, task_body("latecomer"))
    async with running_operator(kmock, operator_config):
        await eventually(lambda: _phase(api, "survivor", "Running"), what="Running after the restart")
        await eventually(lambda: api.get(f"{JOBS}/xt-latecomer"), what="the latecomer's Job")
        await eventually(lambda: _phase(api, "latecomer", "Scheduled"), what="latecomer Scheduled")
    jobs = [job["metadata"]["name"] for job in await api.items(JOBS)]
    assert sorted(jobs) == ["xt-latecomer", "xt-survivor"]
    task = await api.get(f"{TASKS}/survivor")
    assert task["status"]["phase"] == "Running"
    assert len(await _scheduled_events(api, "survivor")) == 1


async def _scheduled_events(api, name):
    return [e for e in api.events_for(name) if e["reason"] == "Scheduled"]
