"""The namespace's deny-all NetworkPolicy: there before the first isolated pod, put back when touched."""

from __future__ import annotations

import asyncio
from typing import Any

from .conftest import JOBS, NETPOLS, TASKS, eventually, task_body

FENCE = f"{NETPOLS}/expbuild-isolation-deny-all"


def _posts(kmock: Any, path: str) -> int:
    return sum(1 for r in list(kmock) if r.method == "POST" and r.url.path == path)


async def test_one_fence_per_namespace_before_the_first_job_and_none_per_task(api, operator, kmock):
    await api.create(TASKS, task_body("first"))
    await eventually(lambda: api.get(f"{JOBS}/xt-first"), what="the first Job")
    first_job = next(i for i, r in enumerate(list(kmock)) if r.method == "POST" and r.url.path == JOBS)
    fence = next(i for i, r in enumerate(list(kmock)) if r.method == "POST" and r.url.path == NETPOLS)
    assert fence < first_job  # the pod it fences cannot exist before it
    for name in ("second", "third"):
        await api.create(TASKS, task_body(name))
        await eventually(lambda name=name: api.get(f"{JOBS}/xt-{name}"), what=f"the Job of {name}")
    assert _posts(kmock, NETPOLS) == 1


async def test_a_deleted_or_opened_fence_is_put_back(api, operator, kmock):
    await api.create(TASKS, task_body("fenced"))
    await eventually(lambda: api.get(f"{JOBS}/xt-fenced"), what="the Job")
    await api.patch(FENCE, {"spec": {"egress": [{}]}})  # someone allows all egress

    async def closed() -> bool:
        policy = await api.get(FENCE)
        return bool(policy) and not (policy["spec"].get("egress"))
    await eventually(closed, what="the fence closed again")
    await api.delete(FENCE)
    await eventually(lambda: api.get(FENCE), what="the fence recreated")
    assert (await api.get(FENCE))["spec"]["podSelector"]["matchLabels"]["expbuild.io/network"] == "isolated"


async def test_no_job_is_created_without_its_fence(api, operator, kmock):
    kmock["post", NETPOLS] << 403 << {"kind": "Status", "message": "networkpolicies is forbidden"}
    await api.create(TASKS, task_body("unfenced"))

    async def ended():
        task = await api.get(f"{TASKS}/unfenced")
        return task if (task.get("status") or {}).get("phase") == "Error" else None
    task = await eventually(ended, what="Error")
    assert task["status"]["reason"] == "Rejected" and "forbidden" in task["status"]["message"]
    await asyncio.sleep(0.5)
    assert await api.get(f"{JOBS}/xt-unfenced") is None and _posts(kmock, JOBS) == 0
