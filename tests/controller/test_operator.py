from __future__ import annotations

from .conftest import CONFIGMAPS, JOBS, NETPOLS, TASKS, eventually, task_body


async def test_a_new_task_gets_its_job_policy_and_inputs(api, operator):
    body = task_body("hello", inputs=[{"path": "a.txt", "content": "A"}])
    await api.create(TASKS, body)
    job = await eventually(lambda: api.get(f"{JOBS}/xt-hello"), what="the Job")
    assert job["spec"]["backoffLimit"] == 0
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-hello"
    assert await api.get(f"{NETPOLS}/xt-hello")
    assert (await api.get(f"{CONFIGMAPS}/xt-hello-inputs"))["data"] == {"input-0": "A"}
    task = await eventually(lambda: _phase(api, "hello", "Scheduled"), what="phase Scheduled")
    assert task["status"]["executor"] == "job" and task["status"]["isolationLevel"] == "Container"


async def _phase(api, name, phase):
    task = await api.get(f"{TASKS}/{name}")
    return task if task and (task.get("status") or {}).get("phase") == phase else None
