"""The operator enforces ExecutionPolicies: refusals with an Event naming the policy, raised floors, quotas."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any

import pytest

from tests.agent.conftest import declare_leases
from tests.unit.policy_cases import VIOLATIONS

from .conftest import (
    JOBS,
    NAMESPACES,
    PODS,
    POLICIES,
    TASKS,
    Api,
    eventually,
    forget_served_requests,
    running_operator,
    task_body,
)


def tasks_in(namespace: str) -> str:
    return f"/apis/expbuild.io/v1alpha1/namespaces/{namespace}/executiontasks"


def jobs_in(namespace: str) -> str:
    return f"/apis/batch/v1/namespaces/{namespace}/jobs"


def policy(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionPolicy", "metadata": {"name": name},
            "spec": spec}


async def namespace(api: Api, name: str, **labels: str) -> None:
    await api.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace",
                                  "metadata": {"name": name, "labels": labels}})


def in_namespace(body: dict[str, Any], ns: str, created: str = "2025-03-01T12:00:00Z") -> dict[str, Any]:
    body["metadata"].update(namespace=ns, creationTimestamp=created, uid=f"uid-{ns}-{body['metadata']['name']}")
    return body


async def status_of(api: Api, namespace: str, name: str, *phases: str) -> Any:
    task = await api.get(f"{tasks_in(namespace)}/{name}")
    return task if task and (task.get("status") or {}).get("phase") in phases else None


async def warnings_about(api: Api, name: str, reason: str) -> list[str]:
    return [req.data["message"] for req in list(api.server)
            if req.method == "POST" and req.url.path.endswith("/events") and isinstance(req.data, dict)
            and req.data.get("involvedObject", {}).get("name") == name and req.data.get("reason") == reason]


async def test_every_knob_refuses_its_violating_task_with_an_event_naming_the_policy(api, kmock, operator_config):
    # One namespace and one policy per case, and a namespace no policy governs for the same tasks (the control).
    for case, (rules, _, _, _, _) in VIOLATIONS.items():
        await namespace(api, case, case=case)
        await api.create(POLICIES, policy(f"policy-{case}", namespaceSelector={"matchLabels": {"case": case}},
                                          **rules))
    await namespace(api, "free")
    declare_leases(kmock)  # the control of the executor case asks for a node agent
    async with running_operator(kmock, operator_config):
        for case, (_, spec, _, _, _) in VIOLATIONS.items():
            await api.create(tasks_in(case), in_namespace(task_body("t", **spec), case))
            await api.create(tasks_in("free"), in_namespace(task_body(case, **spec), "free"))
        for case, (_, _, field, value, _) in VIOLATIONS.items():
            done = await eventually(lambda case=case: status_of(api, case, "t", "Error"), what=f"{case} refused")
            status = done["status"]
            assert status["reason"] == "PolicyViolation", (case, status)
            assert field in status["message"] and value in status["message"], (case, status["message"])
            assert f"ExecutionPolicy policy-{case}" in status["message"]
            events = await eventually(lambda: warnings_about(api, "t", "PolicyViolation"), what="the Event")
            assert any(f"ExecutionPolicy policy-{case}" in message for message in events)
            assert await api.items(jobs_in(case)) == [], f"{case}: a Job was created for a refused task"
        for case in VIOLATIONS:  # the same tasks where no policy applies: past the policy check
            free = await eventually(lambda case=case: status_of(api, "free", case, "Scheduled", "Error"), what=case)
            assert free["status"]["reason"] != "PolicyViolation", (case, free["status"])


async def test_a_policy_created_or_a_namespace_relabelled_later_applies_to_the_next_task(api, kmock, operator_config):
    async with running_operator(kmock, operator_config):
        await api.create(TASKS, task_body("before"))
        await eventually(lambda: status_of(api, "ci", "before", "Scheduled"), what="before Scheduled")
        await api.create(POLICIES, policy("no-full", namespaceSelector={"matchLabels": {"tier": "untrusted"}},
                                          network={"policies": ["None"]}))
        await api.create(TASKS, task_body("not-selected", network={"policy": "Full"}))
        await eventually(lambda: status_of(api, "ci", "not-selected", "Scheduled"), what="not selected: runs")
        await api.patch(f"{NAMESPACES}/ci", {"metadata": {"labels": {"tier": "untrusted"}}})
        await asyncio.sleep(0.5)  # the namespace's watch event
        await api.create(TASKS, task_body("after", network={"policy": "Full"}))
        done = await eventually(lambda: status_of(api, "ci", "after", "Error", "Scheduled"), what="after")
        assert done["status"]["reason"] == "PolicyViolation" and "ExecutionPolicy no-full" in done["status"]["message"]


async def test_a_raised_floor_is_rendered_and_said_in_the_status(api, kmock, operator_config):
    config = operator_config.model_copy(update={"vm_runtime_class": "kata", "vm_runtime_classes": ["kata"]})
    await api.create(POLICIES, policy("vm-only", isolation={"minimum": "VM", "belowMinimum": "Raise"}))
    async with running_operator(kmock, config):
        await api.create(TASKS, task_body("raised", isolation={"minimum": "Process"}))
        done = await eventually(lambda: status_of(api, "ci", "raised", "Scheduled", "Error"), what="raised")
        status = done["status"]
        assert status["isolationLevel"] == "VM"
        assert status["message"] == "spec.isolation.minimum Process raised to VM by ExecutionPolicy vm-only"
        job = await api.get(f"{JOBS}/xt-raised")
        assert job["spec"]["template"]["spec"]["runtimeClassName"] == "kata"


async def test_a_floor_raised_beyond_what_the_cluster_offers_is_an_error_not_a_downgrade(api, kmock, operator_config):
    await api.create(POLICIES, policy("vm-only", isolation={"minimum": "VM", "belowMinimum": "Raise"}))
    async with running_operator(kmock, operator_config):  # no VM RuntimeClass configured
        await api.create(TASKS, task_body("nowhere"))
        done = await eventually(lambda: status_of(api, "ci", "nowhere", "Error", "Scheduled"), what="refused")
        assert done["status"]["reason"] == "IsolationUnavailable"
        assert "raised to VM by ExecutionPolicy vm-only" in done["status"]["message"]
        assert await api.get(f"{JOBS}/xt-nowhere") is None


BURST, QUOTA = 12, 3


async def test_a_burst_beyond_the_quota_waits_and_starts_in_creation_order(api, kmock, operator_config):
    await api.create(POLICIES, policy("three-at-a-time", maxUnfinishedTasks=QUOTA))
    forget_served_requests(kmock)
    names = [f"q{i:02d}" for i in range(BURST)]  # creation order: q00 oldest
    bodies = [in_namespace(task_body(name), "ci", f"2025-03-01T12:{i // 60:02d}:{i % 60:02d}Z")
              for i, name in enumerate(names)]
    random.Random(7).shuffle(bodies)  # arriving in another order than they were created

    async def phases() -> dict[str, tuple[str, str]]:
        return {t["metadata"]["name"]: ((t.get("status") or {}).get("phase", "Pending"),
                                        (t.get("status") or {}).get("reason", ""))
                for t in await api.items(TASKS)}

    async with running_operator(kmock, operator_config):
        await asyncio.gather(*(api.create(TASKS, body) for body in bodies))

        async def settled() -> Any:
            now = await phases()
            waiting = [n for n, (p, r) in now.items() if (p, r) == ("Pending", "QuotaExceeded")]
            scheduled = [n for n, (p, _) in now.items() if p == "Scheduled"]
            return now if len(waiting) == BURST - QUOTA and len(scheduled) == QUOTA else None
        now = await eventually(settled, timeout=30, what="the burst to settle")
        await asyncio.sleep(0.5)  # nothing more starts
        assert await phases() == now and len(await api.items(JOBS)) == QUOTA
        started = sorted(n for n, (p, _) in now.items() if p == "Scheduled")
        order: list[str] = []
        while len(order) < BURST - QUOTA:
            running = sorted(n for n, (p, _) in (await phases()).items() if p == "Scheduled")
            assert len(running) <= QUOTA, running
            await api.patch(f"{TASKS}/{running[0]}", {"spec": {"cancel": True}})  # one finishes

            async def next_started(before: tuple[str, ...] = tuple(running)) -> Any:
                now = await phases()
                new = [n for n, (p, _) in now.items() if p == "Scheduled" and n not in before]
                return new if new and now[before[0]][0] == "Cancelled" else None
            new = await eventually(next_started, timeout=20, what="the next task to start")
            assert len(new) == 1, new
            order += new
            await asyncio.sleep(0.2)  # no second start sneaks in
            assert sum(p == "Scheduled" for p, _ in (await phases()).values()) == QUOTA
        waiting_from_the_start = [n for n in names if n not in started]
        assert order == waiting_from_the_start, "the waiting tasks did not start oldest first"


async def test_a_restarted_operator_keeps_the_quota_and_the_line(api, kmock, operator_config):
    """What a previous operator left (one task running, two waiting) is read at startup before any task starts."""
    await api.create(POLICIES, policy("one-at-a-time", maxUnfinishedTasks=1))
    # Listed in this order, the running task last: only a startup read of them all keeps the newcomer waiting.
    await api.create(TASKS, in_namespace(task_body("newest"), "ci", "2025-03-01T12:00:30Z"))
    for name, second in (("younger", 9), ("older", 5)):
        body = in_namespace(task_body(name), "ci", f"2025-03-01T12:00:{second:02d}Z")
        body["status"] = {"phase": "Pending", "reason": "QuotaExceeded", "message": "waiting"}
        await api.create(TASKS, body)
    running = in_namespace(task_body("running"), "ci", "2025-03-01T12:00:00Z")
    running["status"] = {"phase": "Running", "reason": "Started", "executor": "job"}
    await api.create(TASKS, running)
    async with running_operator(kmock, operator_config):
        await asyncio.sleep(1.0)
        assert await api.items(JOBS) == [], "a task started while the namespace was at its quota"
        newest = await api.get(f"{TASKS}/newest")
        assert newest["status"]["reason"] == "QuotaExceeded"
        await api.patch(f"{TASKS}/running", {"spec": {"cancel": True}})
        await eventually(lambda: status_of(api, "ci", "older", "Scheduled"), what="the oldest waiting task to start")
        await asyncio.sleep(0.5)
        assert [job["metadata"]["name"] for job in await api.items(JOBS)] == ["xt-older"]


def sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_finished_task_is_charged_to_its_namespace_and_audited_with_its_policy(api, kmock, operator_config,
                                                                                      caplog):
    from .test_operator import job_pod, kubelet_completes

    caplog.set_level(logging.INFO, logger="expbuild.audit")
    await api.create(POLICIES, policy("team-ci", maxResources={"timeout": "1h"}))
    before = (sample("expbuild_namespace_tasks_total", namespace="ci", phase="Succeeded"),
              sample("expbuild_namespace_cpu_seconds_total", namespace="ci"),
              sample("expbuild_namespace_memory_byte_seconds_total", namespace="ci"))
    async with running_operator(kmock, operator_config):
        await api.create(TASKS, task_body("charged"))
        await eventually(lambda: status_of(api, "ci", "charged", "Scheduled"), what="Scheduled")
        await api.create(PODS, await job_pod(api, "charged", {"running": {"startedAt": "2025-03-01T12:00:02Z"}}))
        await eventually(lambda: status_of(api, "ci", "charged", "Running"), what="Running")
        report = '{"v":1,"exit":0,"cg":2,"cpu_us":500000,"mem":1048576,"trunc":0,"out":[]}'
        await kubelet_completes(api, "charged", report)
        done = await eventually(lambda: status_of(api, "ci", "charged", "Succeeded"), what="Succeeded")
    stats, duration = done["status"]["stats"], done["status"]["durationSeconds"]
    assert (stats["cpuTimeSeconds"], stats["peakMemoryBytes"], duration) == (0.5, 1048576, 3.0)
    after = (sample("expbuild_namespace_tasks_total", namespace="ci", phase="Succeeded"),
             sample("expbuild_namespace_cpu_seconds_total", namespace="ci"),
             sample("expbuild_namespace_memory_byte_seconds_total", namespace="ci"))
    assert [b - a for a, b in zip(before, after)] == pytest.approx([1, 0.5, 1048576 * 3.0])  # counters shared with other tests
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "expbuild.audit"]
    start = next(line for line in lines if line["event"] == "start" and line["task"] == "ci/charged")
    assert start["namespace"] == "ci" and start["policies"] == ["team-ci"]
    end = next(line for line in lines if line["event"] == "end" and line["task"] == "ci/charged")
    assert end["namespace"] == "ci" and end["outcome"]["phase"] == "Succeeded"
