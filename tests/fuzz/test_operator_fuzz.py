"""Fuzz the operator's handlers on KMock with arbitrary ExecutionTask objects (issue #14).

The API server's schema stops most bad objects, but not all (objects stored before a CRD change,
a status written by anyone with status access, a schema the emulator does not enforce): whatever a
task object holds, no handler may fail on it, because kopf retries a failing handler forever (a crash
loop per object) and a failing delete handler keeps the finalizer, so the object can never go. A
task the operator cannot read ends in Error, and the operator keeps serving the valid tasks beside it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kmock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from expbuild_isolation.kube.config import OperatorConfig

from ..controller.conftest import TASKS, Api, declare_resources, eventually, running_operator, task_body
from .strategies import NASTY, any_spec, json_values

EXAMPLES = max(3, int(os.environ.get("EXPBUILD_FUZZ_EXAMPLES", "60")) // 10)
PHASES = ["Pending", "Scheduled", "Running", "Succeeded", "Failed", "TimedOut", "Cancelled", "Error"]

# Any object a status could hold. (Not a scalar or a list: the CRD's schema makes status an object on every
# API server, and a merge patch onto a scalar is where KMock departs from RFC 7386.)
statuses = st.none() | st.dictionaries(st.text(max_size=12), json_values, max_size=4) | st.fixed_dictionaries({}, optional={
    "phase": st.sampled_from(PHASES + NASTY[:8]), "exitCode": json_values, "node": json_values,
    "startTime": st.sampled_from(["2025-03-01T12:00:02Z", "yesterday", ""]) | json_values})
labels = st.dictionaries(st.sampled_from(["expbuild.io/node", "expbuild.io/task", "x"]),
                         st.sampled_from(["worker-3", "", "a" * 70, "../x"]), max_size=2)


@st.composite
def task_objects(draw: st.DrawFn, index: int) -> dict[str, Any]:
    body = task_body(f"fz-{index}")
    body["spec"] = draw(any_spec)
    status = draw(statuses)
    if status is not None:
        body["status"] = status
    body["metadata"]["labels"] = draw(labels)
    return body


class Failures(logging.Handler):
    """kopf's per-object log lines that say a handler failed (it retries those: a crash loop)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "failed" in message and ("Handler" in message or "handler" in message):
            self.lines.append(message)


async def feed(bodies: list[dict[str, Any]]) -> list[str]:
    failures = Failures()
    logging.getLogger("kopf").addHandler(failures)
    config = OperatorConfig(allowed_images=["localhost/*"], metrics_port=0, resync_seconds=3600,
                            image_pull_grace_seconds=0)
    try:
        async with kmock.KubernetesEmulator() as server, kmock.Server(server):
            declare_resources(server)
            api = Api(server)
            async with running_operator(server, config):
                for body in bodies:
                    await api.create(TASKS, body)
                await api.create(TASKS, task_body("fz-valid"))   # the operator keeps serving a valid task
                await eventually(lambda: _phase_is(api, "fz-valid", "Scheduled"), timeout=20, what="fz-valid Scheduled")
                await asyncio.sleep(1.0)   # time for a failing handler to fail again
                for body in bodies:
                    await api.delete(f"{TASKS}/{body['metadata']['name']}")
                for body in bodies:   # deleted for good: no handler keeps the finalizer
                    name = body["metadata"]["name"]
                    await eventually(lambda name=name: _gone(api, name), timeout=20, what=f"{name} deleted")
    finally:
        logging.getLogger("kopf").removeHandler(failures)
    return failures.lines


async def _phase_is(api: Api, name: str, phase: str) -> bool:
    task = await api.get(f"{TASKS}/{name}")
    return bool(task) and (task.get("status") or {}).get("phase") == phase


async def _gone(api: Api, name: str) -> bool:
    return await api.get(f"{TASKS}/{name}") is None


@settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("CI") == "true",
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(bodies=st.integers(1, 4).flatmap(lambda n: st.tuples(*(task_objects(i) for i in range(n)))))
def test_no_handler_fails_on_any_task_object(bodies):
    failures = asyncio.run(feed(list(bodies)))
    assert failures == [], failures[:5]


# The cases the fuzzer found, pinned (each failed before state.readable): fixtures from tests/controller.
from ..controller.conftest import api, operator, operator_config  # noqa: E402,F401


async def test_an_unreadable_task_ends_in_error_once_and_can_still_be_deleted(api, operator):
    body = task_body("unreadable")
    body["spec"] = {"command": "not a list", "timeout": "forever"}
    body["status"] = {"phase": "/etc/passwd"}
    await api.create(TASKS, body)
    task = await eventually(lambda: _phase_is(api, "unreadable", "Error"), what="phase Error")
    assert task
    status = (await api.get(f"{TASKS}/unreadable"))["status"]
    assert status["reason"] == "InvalidTask" and "spec.command" in status["message"]
    await api.create(TASKS, task_body("readable"))   # the operator goes on serving
    await eventually(lambda: _phase_is(api, "readable", "Scheduled"), what="readable Scheduled")
    await api.delete(f"{TASKS}/unreadable")
    await eventually(lambda: _gone(api, "unreadable"), what="deleted")
