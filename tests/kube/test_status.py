"""status_from with Job and Pod dicts shaped like what the API server returns."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from expbuild_isolation.api.task import ExecutionTaskStatus
from expbuild_isolation.kube import render, status
from expbuild_isolation.kube.config import OperatorConfig

from .conftest import make_task

NOW = datetime(2025, 3, 1, 12, 0, 30, tzinfo=timezone.utc)
T0 = "2025-03-01T12:00:00Z"


def job(task, *, conditions=(), runtime_class=False, **status_fields):
    rendered = render.render_job(task, OperatorConfig(vm_runtime_class="kata") if runtime_class else OperatorConfig())
    rendered["metadata"] |= {"uid": "job-uid", "creationTimestamp": T0}
    rendered["status"] = {"startTime": T0, **status_fields}
    if conditions:
        rendered["status"]["conditions"] = [
            {"type": kind, "status": "True", "reason": reason, "message": message,
             "lastProbeTime": "2025-03-01T12:00:20Z", "lastTransitionTime": "2025-03-01T12:00:20Z"}
            for kind, reason, message in conditions]
    return rendered


def pod(*, phase="Pending", main=None, init=None, node="worker-3", scheduled=True, reason=None, message=None,
        created=T0):
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "xt-compile-42-abcde", "namespace": "ci", "creationTimestamp": created,
                         "labels": {"expbuild.io/task": "compile-42", "batch.kubernetes.io/job-name": "xt-compile-42"}},
            "spec": {"nodeName": node} if scheduled else {},
            "status": {"phase": phase, "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": T0} if scheduled else
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/3 nodes are available: 3 Insufficient memory.", "lastTransitionTime": T0}]}}
    if reason:
        body["status"] |= {"reason": reason, "message": message}
    if init is not None:
        body["status"]["initContainerStatuses"] = [{"name": "prepare", "image": "op", "ready": False,
                                                    "restartCount": 0, "state": init}]
    if main is not None:
        body["status"]["containerStatuses"] = [{"name": "task", "image": "localhost/busybox:latest", "ready": False,
                                                "restartCount": 0, "state": main}]
    return body


def terminated(code, reason="Completed", message="", started=T0, finished="2025-03-01T12:00:02.5Z"):
    return {"terminated": {"exitCode": code, "reason": reason, "message": message,
                           "startedAt": started, "finishedAt": finished.replace(".5", "")}}


INIT_DONE = terminated(0)


def test_a_zero_exit_succeeds_with_outputs_and_stats():
    task = make_task(outputs={"paths": ["out/app"]}, status={"phase": "Running"})
    report = json.dumps({"v": 1, "exit": 0, "cg": 2, "cpu_us": 1200000, "mem": 31000000, "trunc": 0,
                         "out": [[0, "b" * 64, 1234, 1]]})
    patch = status.status_from(task, job(task, conditions=[("Complete", "", "")], succeeded=1),
                               pod(phase="Succeeded", init=INIT_DONE, main=terminated(0, message=report)), NOW)
    assert patch["phase"] == "Succeeded" and patch["reason"] == "Completed" and patch["exitCode"] == 0
    assert patch["executor"] == "job" and patch["isolationLevel"] == "Container" and patch["node"] == "worker-3"
    assert patch["startTime"] == T0 and patch["completionTime"] == "2025-03-01T12:00:02Z"
    assert patch["durationSeconds"] == 2.0 and patch["observedGeneration"] == 1
    assert patch["stats"] == {"cpuTimeSeconds": 1.2, "peakMemoryBytes": 31000000}
    assert patch["outputs"] == [{"path": "out/app", "sha256": "b" * 64, "sizeBytes": 1234, "executable": True}]
    finished = {c["type"]: c for c in patch["conditions"]}["Finished"]
    assert {"type": "Finished", "status": "True", "reason": "Completed"}.items() <= finished.items()
    assert ExecutionTaskStatus.model_validate(patch).outputs[0].size_bytes == 1234  # the patch fits the API


def test_a_nonzero_exit_fails_with_the_code():
    task = make_task()
    patch = status.status_from(task, job(task, conditions=[("Failed", "BackoffLimitExceeded", "")]),
                               pod(phase="Failed", init=INIT_DONE, main=terminated(2, "Error")), NOW)
    assert (patch["phase"], patch["reason"], patch["exitCode"]) == ("Failed", "NonZeroExit", 2)
    assert "exited with code 2" in patch["message"]


def test_oom_killed_is_named():
    task = make_task(resources={"memory": "64Mi"})
    patch = status.status_from(task, job(task, conditions=[("Failed", "BackoffLimitExceeded", "")]),
                               pod(phase="Failed", init=INIT_DONE, main=terminated(137, "OOMKilled")), NOW)
    assert (patch["phase"], patch["reason"], patch["exitCode"]) == ("Failed", "OOMKilled", 137)
    assert "64Mi" in patch["message"]


def test_the_deadline_ends_timed_out_with_exit_124_even_without_the_pod():
    task = make_task(timeout="20s", status={"phase": "Running", "startTime": T0})
    failed = job(task, conditions=[("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")])
    patch = status.status_from(task, failed, None, NOW)
    assert (patch["phase"], patch["reason"], patch["exitCode"]) == ("TimedOut", "DeadlineExceeded", 124)
    assert patch["completionTime"] == "2025-03-01T12:00:20Z" and patch["durationSeconds"] == 20.0
    killed = pod(phase="Failed", init=INIT_DONE, main=terminated(143, "Error"))
    assert status.status_from(task, failed, killed, NOW)["exitCode"] == 124


def test_eviction_fails_with_the_kubelets_message():
    task = make_task()
    evicted = pod(phase="Failed", reason="Evicted", message="The node was low on resource: memory.",
                  main={"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown"}})
    evicted["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ContainerCreating"}}
    patch = status.status_from(task, job(task), evicted, NOW)
    assert (patch["phase"], patch["reason"]) == ("Failed", "Evicted")
    assert patch["message"] == "The node was low on resource: memory."


def test_image_pull_errors_wait_for_the_grace_period_then_error():
    task = make_task()
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "nope:1"'}}
    early = status.status_from(task, job(task), pod(init=INIT_DONE, main=waiting), NOW, image_pull_grace=60)
    assert early["phase"] == "Scheduled" and early["reason"] == "ImagePullBackOff"
    assert {"type": "ImageReady", "status": "False"}.items() <= early["conditions"][-1].items()
    late = status.status_from(task, job(task), pod(init=INIT_DONE, main=waiting), NOW + timedelta(seconds=60),
                              image_pull_grace=60)
    assert (late["phase"], late["reason"]) == ("Error", "ImagePullBackOff")
    assert 'pulling image "nope:1"' in late["message"]


def test_err_image_pull_on_the_init_container_counts_too():
    task = make_task()
    waiting = {"waiting": {"reason": "ErrImagePull", "message": "registry unreachable"}}
    patch = status.status_from(task, job(task), pod(init=waiting), NOW, image_pull_grace=0)
    assert (patch["phase"], patch["reason"]) == ("Error", "ErrImagePull")


def test_an_invalid_image_name_errors_at_once():
    task = make_task()
    waiting = {"waiting": {"reason": "InvalidImageName", "message": "bad"}}
    patch = status.status_from(task, job(task), pod(init=INIT_DONE, main=waiting), NOW)
    assert patch["phase"] == "Error"


def test_unschedulable_is_a_condition_while_pending():
    task = make_task(status={"phase": "Scheduled"})
    patch = status.status_from(task, job(task), pod(scheduled=False), NOW)
    assert (patch["phase"], patch["reason"]) == ("Scheduled", "Unschedulable")
    (cond,) = patch["conditions"]
    assert cond["type"] == "Scheduled" and cond["status"] == "False" and "Insufficient memory" in cond["message"]
    assert "node" not in patch


def test_a_running_container_means_running_with_start_time_and_node():
    task = make_task(status={"phase": "Scheduled"})
    running = pod(phase="Running", init=INIT_DONE, main={"running": {"startedAt": "2025-03-01T12:00:05Z"}})
    patch = status.status_from(task, job(task, active=1), running, NOW)
    assert patch["phase"] == "Running" and patch["startTime"] == "2025-03-01T12:00:05Z"
    assert patch["node"] == "worker-3"


def test_condition_transition_times_survive_unchanged_conditions():
    earlier = "2025-03-01T11:00:00Z"
    task = make_task(status={"phase": "Running", "conditions": [
        {"type": "Scheduled", "status": "True", "lastTransitionTime": earlier}]})
    running = pod(phase="Running", init=INIT_DONE, main={"running": {"startedAt": T0}})
    conditions = {c["type"]: c for c in status.status_from(task, job(task), running, NOW)["conditions"]}
    assert conditions["Scheduled"]["lastTransitionTime"] == earlier
    assert conditions["Started"]["lastTransitionTime"] == status.timestamp(NOW)


def test_a_failed_prepare_step_is_an_error_not_the_users_failure():
    task = make_task()
    init = {"terminated": {"exitCode": 1, "reason": "Error", "message": "cp: can't stat"}}
    patch = status.status_from(task, job(task), pod(phase="Failed", init=init), NOW)
    assert (patch["phase"], patch["reason"]) == ("Error", "PrepareFailed") and "cp: can't stat" in patch["message"]


def test_vm_isolation_is_reported_only_for_a_runtime_class_trusted_as_a_vm():
    task = make_task(isolation={"minimum": "VM"})
    patch = status.status_from(task, job(task, runtime_class=True), None, NOW, trusted_vm=frozenset({"kata"}))
    assert patch["isolationLevel"] == "VM" and patch["phase"] == "Scheduled"
    # a RuntimeClass the operator does not trust as a VM (a GPU runtime, say) is Container
    patch = status.status_from(task, job(task, runtime_class=True), None, NOW, trusted_vm=frozenset({"gvisor"}))
    assert patch["isolationLevel"] == "Container"


def test_a_kill_after_the_deadline_is_a_timeout_whichever_event_comes_first():
    task = make_task(timeout="5s", status={"phase": "Running"})
    # The pod's termination arrives before the Job's DeadlineExceeded condition (seen on a real cluster).
    killed = terminated(143, reason="Error", started=T0, finished="2025-03-01T12:00:05.5Z")
    patch = status.status_from(task, job(task), pod(phase="Failed", init=INIT_DONE, main=killed), NOW)
    assert (patch["phase"], patch["reason"], patch["exitCode"]) == ("TimedOut", "DeadlineExceeded", 124)
    # the same signal well before the deadline is the command's own failure
    early = terminated(143, reason="Error", started=T0, finished="2025-03-01T12:00:02.5Z")
    patch = status.status_from(task, job(task), pod(phase="Failed", init=INIT_DONE, main=early), NOW)
    assert (patch["phase"], patch["exitCode"]) == ("Failed", 143)
    # a clean exit at the deadline is a success
    done = terminated(0, started=T0, finished="2025-03-01T12:00:05.5Z")
    assert status.status_from(task, job(task), pod(phase="Succeeded", init=INIT_DONE, main=done), NOW)["phase"] == \
        "Succeeded"


def test_outputs_and_stats_are_marked_as_the_pods_own_claims():
    task = make_task(outputs={"paths": ["out/app"]}, status={"phase": "Running"})
    report = json.dumps({"v": 1, "exit": 0, "cg": 2, "cpu_us": 1, "mem": 1, "trunc": 0, "out": [[0, "b" * 64, 1, 0]]})
    patch = status.status_from(task, job(task, conditions=[("Complete", "", "")], succeeded=1),
                               pod(phase="Succeeded", init=INIT_DONE, main=terminated(0, message=report)), NOW)
    marked = {c["type"]: c for c in patch["conditions"]}["SelfReported"]
    assert marked["status"] == "True" and "status.outputs and status.stats" in marked["message"]
    without = status.status_from(task, job(task), pod(phase="Succeeded", init=INIT_DONE, main=terminated(0)), NOW)
    assert "SelfReported" not in {c["type"] for c in without["conditions"]}


def test_finished_phases_are_sticky():
    task = make_task(status={"phase": "Cancelled"})
    assert status.status_from(task, job(task), pod(phase="Running"), NOW) == {}


def test_a_vanished_job_is_an_error_once_scheduled_but_nothing_before():
    assert status.status_from(make_task(), None, None, NOW) == {}
    patch = status.status_from(make_task(status={"phase": "Running"}), None, None, NOW)
    assert (patch["phase"], patch["reason"]) == ("Error", "JobLost")


def test_a_complete_job_without_its_pod_still_succeeds():
    task = make_task(status={"phase": "Running"})
    patch = status.status_from(task, job(task, conditions=[("Complete", "", "")], completionTime="2025-03-01T12:00:09Z"),
                               None, NOW)
    assert (patch["phase"], patch["exitCode"], patch["durationSeconds"]) == ("Succeeded", 0, 9.0)


def test_missing_and_truncated_outputs_are_explained():
    task = make_task(outputs={"paths": ["a", "b"]})
    report = json.dumps({"v": 1, "exit": 0, "cg": 0, "cpu_us": None, "mem": None, "trunc": 1, "out": [[0, None, 0, 0]]})
    patch = status.status_from(task, job(task), pod(phase="Succeeded", init=INIT_DONE, main=terminated(0, message=report)),
                               NOW)
    assert "declared outputs missing or not regular files: a" in patch["message"] and "truncated" in patch["message"]
    assert "stats" not in patch
    # the same semantics as every local backend: exit 0 without a declared output is not a success
    assert (patch["phase"], patch["reason"], patch["exitCode"]) == ("Failed", "OutputMissing", 0)


def test_outputs_are_attributed_to_the_paths_the_run_used_not_to_a_changed_spec():
    ran = make_task(outputs={"paths": ["out/app", "out/report.txt"]}, status={"phase": "Running"})
    rendered = job(ran, conditions=[("Complete", "", "")], succeeded=1)
    changed = make_task(outputs={"paths": ["out/report.txt", "out/app"]}, status={"phase": "Running"})
    report = json.dumps({"v": 1, "exit": 0, "cg": 2, "cpu_us": 1, "mem": 1, "trunc": 0,
                         "out": [[0, "a" * 64, 10, 1], [1, "b" * 64, 20, 0]]})
    patch = status.status_from(changed, rendered, pod(phase="Succeeded", init=INIT_DONE,
                                                      main=terminated(0, message=report)), NOW)
    assert [(o["path"], o["sha256"][0]) for o in patch["outputs"]] == [("out/app", "a"), ("out/report.txt", "b")]


def test_a_task_that_finished_between_two_looks_still_has_all_three_conditions_with_honest_times():
    task = make_task(status={"phase": "Scheduled"})  # Running was never seen
    patch = status.status_from(task, job(task, conditions=[("Complete", "", "")], succeeded=1),
                               pod(phase="Succeeded", init=INIT_DONE, main=terminated(0)), NOW)
    conditions = {c["type"]: c for c in patch["conditions"]}
    assert [c["type"] for c in patch["conditions"]] == ["Scheduled", "Started", "Finished"]
    assert conditions["Started"]["status"] == "True" and conditions["Started"]["lastTransitionTime"] == T0
    assert conditions["Finished"]["lastTransitionTime"] == "2025-03-01T12:00:02Z"
    never = status.finished_conditions(task, "PrepareFailed", "x", started=None, finished=NOW, now=NOW)
    started = {c["type"]: c for c in never}["Started"]
    assert (started["status"], started["reason"]) == ("False", "NeverStarted")


def test_the_image_the_kubelet_ran_is_recorded_by_content():
    """The kubelet resolves the task's tag once, when it starts the container; its imageID names the content."""
    task = make_task(status={"phase": "Scheduled"})
    ran = pod(phase="Running", init=INIT_DONE, main={"running": {"startedAt": T0}})
    ran["status"]["containerStatuses"][0]["imageID"] = "localhost/busybox@sha256:" + "c" * 64
    patch = status.status_from(task, job(task), ran, NOW)
    assert patch["phase"] == "Running" and patch["imageID"] == "localhost/busybox@sha256:" + "c" * 64
    assert ExecutionTaskStatus.model_validate(patch).image_id == patch["imageID"]
    assert "imageID" not in status.status_from(task, job(task), pod(phase="Pending"), NOW)  # nothing ran yet
