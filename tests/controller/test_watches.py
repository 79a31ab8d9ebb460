"""The operator asks the API server for its own Jobs, pods and fences only, and what it creates carries the labels.

A watch of all pods would bring every pod event of the cluster to the operator (decoded, then dropped by
kopf's client-side ``labels=`` filter). KMock ignores labelSelector, so the request itself is checked here,
and the selector is checked against what the operator renders: an API server that honours it must not hide
our own objects from us.
"""

from __future__ import annotations

import kopf

from expbuild_isolation.api.task import ExecutionTask
from expbuild_isolation.controller.handlers import JOBS, LABELLED, NETPOLS, PODS, configure, label_selector
from expbuild_isolation.kube import network, render
from expbuild_isolation.kube.config import OperatorConfig

from .conftest import TASKS, eventually, task_body


def matches(selector: str, labels: dict[str, str]) -> bool:
    """An equality-based labelSelector (``key`` and ``key=value`` terms, all required) against ``labels``."""
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if key not in labels or (value and labels[key] != value):
            return False
    return True


def test_the_selectors_are_the_handlers_filters():
    assert label_selector({"a.io/x": kopf.PRESENT, "b": "c"}) == "a.io/x,b=c"
    assert matches("a.io/x,b=c", {"a.io/x": "1", "b": "c"})
    assert not matches("a.io/x,b=c", {"a.io/x": "1", "b": "d"})  # positive control of ``matches``
    assert not matches("a.io/x,b=c", {"b": "c"})


def test_what_the_operator_creates_is_what_its_watches_select():
    config = OperatorConfig(allowed_images=["*"])
    for network_spec in ({"policy": "None"}, {"policy": "Localhost"},
                         {"policy": "Restricted", "allow": ["10.0.0.0/8:443"]}):
        task = ExecutionTask.model_validate(task_body("t", network=network_spec))
        job = render.objects_for(task, config)[-1]
        assert job["kind"] == "Job"
        assert matches(label_selector(LABELLED[JOBS]), job["metadata"]["labels"])
        assert matches(label_selector(LABELLED[PODS]), job["spec"]["template"]["metadata"]["labels"])
    fence = network.render_shared_policy("ci")
    assert matches(label_selector(LABELLED[NETPOLS]), fence["metadata"]["labels"])


async def test_kopf_is_told_the_selectors():
    settings = kopf.OperatorSettings()
    await configure(settings)
    selectors = settings.watching.label_selectors
    assert sorted(selectors.values()) == sorted(label_selector(labels) for labels in LABELLED.values())


async def test_the_watches_of_jobs_pods_and_fences_ask_for_ours_and_the_tasks_watch_for_all(kmock, api, operator):
    await api.create(TASKS, task_body("hello"))
    await eventually(lambda: api.get(f"{TASKS}/hello"), what="the task")

    async def watches() -> dict[str, dict[str, str]] | None:
        seen = {r.url.path.rsplit("/", 1)[-1]: dict(r.params) for r in list(kmock) if r.params.get("watch") == "true"}
        return seen if {"jobs", "pods", "networkpolicies", "executiontasks"} <= set(seen) else None

    seen = await eventually(watches, what="the operator's watches")
    assert seen["jobs"]["labelSelector"] == "app.kubernetes.io/managed-by=expbuild-isolation,expbuild.io/task"
    assert seen["pods"]["labelSelector"] == "app.kubernetes.io/managed-by=expbuild-isolation,expbuild.io/task"
    assert seen["networkpolicies"]["labelSelector"] == "expbuild.io/shared-policy"
    assert "labelSelector" not in seen["executiontasks"]  # positive control: every task is the operator's
    assert "labelSelector" not in seen["executionpolicies"]
