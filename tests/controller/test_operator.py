from __future__ import annotations

import asyncio

from .conftest import CONFIGMAPS, JOBS, NETPOLS, PODS, TASKS, eventually, task_body


async def test_a_new_task_gets_its_job_policy_and_inputs(api, operator):
    body = task_body("hello", inputs=[{"path": "a.txt", "content": "A"}])
    await api.create(TASKS, body)
    job = await eventually(lambda: api.get(f"{JOBS}/xt-hello"), what="the Job")
    assert job["spec"]["backoffLimit"] == 0
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-hello"
    assert await api.get(f"{NETPOLS}/expbuild-isolation-deny-all")  # the namespace's fence (network None)
    assert job["spec"]["template"]["metadata"]["labels"]["expbuild.io/network"] == "isolated"
    assert (await api.get(f"{CONFIGMAPS}/xt-hello-inputs"))["data"] == {"input-0": "A"}
    task = await eventually(lambda: _phase(api, "hello", "Scheduled"), what="phase Scheduled")
    assert task["status"]["executor"] == "job" and task["status"]["isolationLevel"] == "Container"


def pod_body(task_name: str, state: dict, phase: str = "Running", *, job_uid: str | None = None) -> dict:
    """A pod of the task's Job as the kubelet reports it; without ``job_uid`` it is one nobody's Job owns."""
    owners = [{"apiVersion": "batch/v1", "kind": "Job", "name": f"xt-{task_name}", "uid": job_uid,
               "controller": True, "blockOwnerDeletion": True}] if job_uid else []
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"xt-{task_name}-abcde", "namespace": "ci", "resourceVersion": "1",
                         "creationTimestamp": "2025-03-01T12:00:01Z", "ownerReferences": owners,
                         "labels": {"expbuild.io/task": task_name, "app.kubernetes.io/managed-by": "expbuild-isolation",
                                    "batch.kubernetes.io/job-name": f"xt-{task_name}"},
                         "annotations": {"expbuild.io/task-name": task_name}},
            "spec": {"nodeName": "worker-3", "containers": [{"name": "task", "image": "x"}]},
            "status": {"phase": phase, "conditions": [{"type": "PodScheduled", "status": "True"}],
                       "initContainerStatuses": [{"name": "prepare", "state": {"terminated": {"exitCode": 0}}}],
                       "containerStatuses": [{"name": "task", "state": state}]}}


async def job_pod(api, task_name: str, state: dict, phase: str = "Running") -> dict:
    """Play the Job controller: the pod its Job creates, controlled by the Job's uid.

    KMock assigns no uids; the API server gives every object one, so the Job gets one here first.
    """
    job = await eventually(lambda: api.get(f"{JOBS}/xt-{task_name}"), what=f"the Job of {task_name}")
    uid = job["metadata"].get("uid") or f"job-uid-{task_name}"
    if not job["metadata"].get("uid"):
        await api.patch(f"{JOBS}/xt-{task_name}", {"metadata": {"uid": uid}})
    return pod_body(task_name, state, phase, job_uid=uid)


async def kubelet_completes(api, task_name: str, report: str) -> None:
    """Play the kubelet and the Job controller: the task's pod and Job end successfully with ``report``."""
    done = {"terminated": {"exitCode": 0, "reason": "Completed", "message": report,
                           "startedAt": "2025-03-01T12:00:02Z", "finishedAt": "2025-03-01T12:00:05Z"}}
    await api.patch(f"{PODS}/xt-{task_name}-abcde", {"status": {"phase": "Succeeded", "containerStatuses": [
        {"name": "task", "state": done}]}})
    await api.patch(f"{JOBS}/xt-{task_name}", {"status": {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True"}]}})


async def test_the_task_follows_its_pod_and_job_to_success(api, operator):
    await api.create(TASKS, task_body("follow", outputs={"paths": ["out/app"]}))
    await eventually(lambda: _phase(api, "follow", "Scheduled"), what="Scheduled")
    await api.create(PODS, await job_pod(api, "follow", {"running": {"startedAt": "2025-03-01T12:00:02Z"}}))
    running = await eventually(lambda: _phase(api, "follow", "Running"), what="Running")
    assert running["status"]["node"] == "worker-3"
    report = '{"v":1,"exit":0,"cg":2,"cpu_us":500000,"mem":1048576,"trunc":0,"out":[[0,"%s",3,0]]}' % ("c" * 64)
    await kubelet_completes(api, "follow", report)
    done = await eventually(lambda: _phase(api, "follow", "Succeeded"), what="Succeeded")
    status = done["status"]
    assert status["exitCode"] == 0 and status["durationSeconds"] == 3.0 and status["reason"] == "Completed"
    assert status["stats"] == {"cpuTimeSeconds": 0.5, "peakMemoryBytes": 1048576}
    assert status["outputs"] == [{"path": "out/app", "sha256": "c" * 64, "sizeBytes": 3, "executable": False}]
    reasons = await eventually(lambda: _event_reasons(api, "follow", {"Scheduled", "Started", "Completed"}),
                               what="events")
    assert {"Scheduled", "Started", "Completed"} <= reasons
    assert {e["source"]["component"] for e in api.events_for("follow")} == {"expbuild-isolation"}


async def test_a_deadline_ends_timed_out_with_124(api, operator):
    await api.create(TASKS, task_body("slow", timeout="5s"))
    await eventually(lambda: api.get(f"{JOBS}/xt-slow"), what="the Job")
    await api.patch(f"{JOBS}/xt-slow", {"status": {"startTime": "2025-03-01T12:00:00Z", "conditions": [
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
         "lastTransitionTime": "2025-03-01T12:00:05Z"}]}})
    task = await eventually(lambda: _phase(api, "slow", "TimedOut"), what="TimedOut")
    assert task["status"]["exitCode"] == 124 and task["status"]["reason"] == "DeadlineExceeded"


async def test_cancel_deletes_the_job_and_ends_cancelled(api, operator):
    await api.create(TASKS, task_body("stopme"))
    await eventually(lambda: _phase(api, "stopme", "Scheduled"), what="Scheduled")
    await api.patch(f"{TASKS}/stopme", {"spec": {"cancel": True}})
    task = await eventually(lambda: _phase(api, "stopme", "Cancelled"), what="Cancelled")
    assert task["status"]["reason"] == "Cancelled"
    assert await api.get(f"{JOBS}/xt-stopme") is None


async def test_deleting_a_job_task_leaves_its_job_to_garbage_collection(api, operator):
    # No finalizer: the task goes at once, and the API server's garbage collector removes what it owns
    # (KMock has none; the owner reference is what a real one follows).
    await api.create(TASKS, task_body("gone"))
    await eventually(lambda: _phase(api, "gone", "Scheduled"), what="Scheduled")
    task = await api.get(f"{TASKS}/gone")
    assert not task["metadata"].get("finalizers")
    (owner,) = (await api.get(f"{JOBS}/xt-gone"))["metadata"]["ownerReferences"]
    assert (owner["uid"], owner["controller"], owner["blockOwnerDeletion"]) == ("uid-gone", True, True)
    await api.delete(f"{TASKS}/gone")
    await eventually(lambda: _absent(api, f"{TASKS}/gone"), what="the task to go")


async def test_a_bad_image_is_an_error_with_an_event_while_a_good_task_still_runs(api, operator):
    await api.create(TASKS, task_body("evil", image="docker.io/evil/miner:latest"))
    await api.create(TASKS, task_body("good"))
    bad = await eventually(lambda: _phase(api, "evil", "Error"), what="Error")
    assert bad["status"]["reason"] == "ImageNotAllowed" and "docker.io/evil/miner:latest" in bad["status"]["message"]
    await eventually(lambda: api.get(f"{JOBS}/xt-good"), what="the good task's Job")
    assert await api.get(f"{JOBS}/xt-evil") is None
    events = await eventually(lambda: _events_for(api, "evil"), what="the Warning event")
    assert any(e["type"] == "Warning" and e["reason"] == "ImageNotAllowed" for e in events)


async def test_vm_without_a_runtime_class_is_an_error_not_a_downgrade(api, operator):
    await api.create(TASKS, task_body("needs-vm", isolation={"minimum": "VM"}))
    task = await eventually(lambda: _phase(api, "needs-vm", "Error"), what="Error")
    assert task["status"]["reason"] == "IsolationUnavailable"
    assert await api.get(f"{JOBS}/xt-needs-vm") is None


async def test_an_object_with_our_name_that_we_do_not_own_is_not_adopted(api, operator):
    await api.create(JOBS, {"apiVersion": "batch/v1", "kind": "Job", "metadata": {
        "name": "xt-squat", "namespace": "ci", "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "x",
                                                                     "uid": "someone-else", "controller": True}]}})
    await api.create(TASKS, task_body("squat", network={"policy": "Full"}))
    task = await eventually(lambda: _phase(api, "squat", "Error"), what="Error")
    assert task["status"]["reason"] == "NameConflict"


async def _phase(api, name, phase):
    task = await api.get(f"{TASKS}/{name}")
    return task if task and (task.get("status") or {}).get("phase") == phase else None


async def _absent(api, path):
    return await api.get(path) is None


async def _events_for(api, name):
    return api.events_for(name)


async def _event_reasons(api, name, wanted):
    reasons = {e.get("reason") for e in await _events_for(api, name)}
    return reasons if wanted <= reasons else None


async def test_a_pod_the_tasks_job_does_not_control_cannot_speak_for_the_task(api, operator):
    # Anyone who may create pods in the namespace can copy a task's labels; only the Job's own pod counts.
    await api.create(TASKS, task_body("forged", outputs={"paths": ["out/app"]}))
    await eventually(lambda: _phase(api, "forged", "Scheduled"), what="Scheduled")
    report = '{"v":1,"exit":0,"cg":2,"cpu_us":1,"mem":1,"trunc":0,"out":[[0,"%s",3,0]]}' % ("f" * 64)
    fake = {"terminated": {"exitCode": 0, "reason": "Completed", "message": report,
                           "startedAt": "2025-03-01T12:00:02Z", "finishedAt": "2025-03-01T12:00:05Z"}}
    await api.create(PODS, pod_body("forged", fake, phase="Succeeded"))  # labelled, but owned by no Job
    await api.patch(f"{TASKS}/forged", {"metadata": {"annotations": {"poke": "1"}}})  # an event to react to
    await asyncio.sleep(1.0)
    task = await api.get(f"{TASKS}/forged")
    assert task["status"]["phase"] == "Scheduled" and not task["status"].get("outputs")
    # The positive control: the Job's own pod is followed.
    await api.delete(f"{PODS}/xt-forged-abcde")
    await api.create(PODS, await job_pod(api, "forged", {"running": {"startedAt": "2025-03-01T12:00:02Z"}}))
    await eventually(lambda: _phase(api, "forged", "Running"), what="Running from the Job's own pod")


async def test_a_401_on_the_job_is_the_operators_credentials_not_the_tasks_fault(api, operator_config, kmock,
                                                                                  monkeypatch):
    """A rotated token answers 401 until kopf logs in again: the task waits and starts, it is not Rejected."""
    from expbuild_isolation.controller import lifecycle
    from expbuild_isolation.controller.cluster import ApiError, Cluster

    from .conftest import running_operator

    monkeypatch.setattr(lifecycle, "RETRY_SECONDS", 0.2)
    original, refused = Cluster.create_or_adopt, []

    async def expired_once(self, obj, owner_uid):
        if obj["kind"] == "Job" and not refused:
            refused.append(obj["metadata"]["name"])
            raise ApiError(401, "Unauthorized", kind="Job")
        return await original(self, obj, owner_uid)

    monkeypatch.setattr(Cluster, "create_or_adopt", expired_once)
    async with running_operator(kmock, operator_config):
        await api.create(TASKS, task_body("rotated"))
        await eventually(lambda: _phase(api, "rotated", "Scheduled"), what="Scheduled after the retry")
    assert refused == ["xt-rotated"]
    assert await api.get(f"{JOBS}/xt-rotated") is not None
