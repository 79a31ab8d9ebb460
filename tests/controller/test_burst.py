"""A burst of tasks: every one gets exactly one Job, is Scheduled, and reaches its final phase."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from .conftest import JOBS, PODS, TASKS, eventually, forget_served_requests, running_operator, task_body
from .test_operator import job_pod, kubelet_completes

BURST = 200


async def test_200_tasks_created_at_once_get_exactly_one_job_each(api, kmock, operator_config):
    posted: Counter[str] = Counter()

    def count(request: Any) -> Any:
        posted[request.data["metadata"]["name"]] += 1
        return request.data

    kmock["post", JOBS] << count
    forget_served_requests(kmock)  # 200 tasks are thousands of requests: KMock's log would make them O(n^2)
    names = [f"burst-{i:03d}" for i in range(BURST)]
    async with running_operator(kmock, operator_config):
        await asyncio.gather(*(api.create(TASKS, task_body(name)) for name in names))

        async def all_scheduled() -> bool:
            tasks = await api.items(TASKS)
            return sum((t.get("status") or {}).get("phase") == "Scheduled" for t in tasks) == BURST

        await eventually(all_scheduled, timeout=120, what=f"{BURST} tasks Scheduled")
        await asyncio.sleep(1.0)  # late duplicates would show up by now
        assert sorted(posted) == sorted(f"xt-{name}" for name in names)
        assert set(posted.values()) == {1}, {name: n for name, n in posted.items() if n != 1}
        assert len(await api.items(JOBS)) == BURST

        # Every pod runs and ends at once (this test plays the Job controller and the kubelet): every task ends.
        async def completes(name: str) -> None:
            await api.create(PODS, await job_pod(api, name, {"running": {"startedAt": "2025-03-01T12:00:02Z"}}))
            await kubelet_completes(api, name, "")

        await asyncio.gather(*(completes(name) for name in names))

        async def all_succeeded() -> bool:
            phases = Counter((t.get("status") or {}).get("phase") for t in await api.items(TASKS))
            return phases["Succeeded"] == BURST

        await eventually(all_succeeded, timeout=120, what=f"{BURST} tasks Succeeded")
    assert set(posted.values()) == {1}  # and no Job was made again on the way
