from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from expbuild_isolation import audit, metrics
from expbuild_isolation.kube.config import OperatorConfig

from .conftest import make_task


def test_settings_come_from_expbuild_variables():
    config = OperatorConfig.from_env({"EXPBUILD_NAMESPACES": "ci, builds", "EXPBUILD_ALLOWED_IMAGES": "registry.local/*",
                                      "EXPBUILD_VM_RUNTIME_CLASS": "kata", "EXPBUILD_LOG_TAIL_BYTES": "100",
                                      "EXPBUILD_FQDN_POLICIES": "true", "EXPBUILD_JOB_TTL_SECONDS": "60"})
    assert config.namespaces == ["ci", "builds"] and config.allowed_images == ["registry.local/*"]
    assert config.vm_runtime_class == "kata" and config.log_tail_bytes == 100 and config.fqdn_policies
    assert config.job_ttl_seconds == 60 and OperatorConfig.from_env({}).allowed_images == ["*"]


def test_an_audit_record_says_who_ran_what_where_and_how_it_ended():
    task = make_task(command=["make", "all"], resources={"cpu": "2", "memory": "1Gi"})
    task.metadata.annotations["expbuild.io/requester"] = "alice@example.com"  # a claim anyone can write: unused
    task.metadata.__pydantic_extra__["managedFields"] = [{"manager": "OpenAPI-Generator"}]
    record = audit.audit_record(task, "end", executor="job", isolation="Container",
                                outcome={"phase": "Succeeded", "exitCode": 0},
                                now=datetime(2025, 1, 1, tzinfo=timezone.utc))
    assert record == {"time": "2025-01-01T00:00:00Z", "event": "end", "task": "ci/compile-42", "namespace": "ci",
                      "uid": task.metadata.uid, "fieldManager": "OpenAPI-Generator", "image": "localhost/busybox:latest",
                      "argv": ["make", "all"], "executor": "job", "isolation": "Container",
                      "limits": {"cpu": "2", "memory": "1Gi"}, "network": "None",
                      "outcome": {"phase": "Succeeded", "exitCode": 0}}


def test_the_field_manager_is_recorded_as_what_it_is_never_as_a_requester(caplog):
    task = make_task()
    task.metadata.__pydantic_extra__["managedFields"] = [{"manager": "kubectl-client-side-apply"}]
    assert audit.field_manager(task) == "kubectl-client-side-apply"
    assert "requester" not in audit.audit_record(task, "start", executor="job", isolation="VM")
    with caplog.at_level(logging.INFO, logger="expbuild.audit"):
        audit.emit(audit.audit_record(task, "start", executor="job", isolation="VM"))
    assert json.loads(caplog.records[-1].getMessage())["event"] == "start"


def test_finished_tasks_are_counted_by_phase_and_executor():
    before = metrics.TASKS_TOTAL.labels(phase="Succeeded", executor="job")._value.get()
    metrics.task_finished("Succeeded", "job", 1.5)
    assert metrics.TASKS_TOTAL.labels(phase="Succeeded", executor="job")._value.get() == before + 1


def test_an_audit_record_names_the_namespace_and_the_policies_that_allowed_the_task():
    task = make_task()
    start = audit.audit_record(task, "start", executor="job", isolation="Container", policies=("team-ci", "all"))
    assert start["namespace"] == "ci" and start["policies"] == ["team-ci", "all"]
    assert audit.audit_record(task, "start", executor="job", isolation="Container", policies=())["policies"] == []
    assert "policies" not in audit.audit_record(task, "end", executor="job", isolation="Container", outcome={})
