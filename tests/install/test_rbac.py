"""The chart's RBAC grants every API call the operator and the agent really make, and little else.

The calls are not listed by hand: the real operator (kopf + ``cluster``) and
the real node agent run representative tasks against KMock (as in
tests/controller and tests/agent), and every request they send is mapped to
the authorizer's question (``rbac.permission_of``). Who sent a request is told
by its User-Agent: ``kopf/`` and ``expbuild-isolation-operator/`` are the
operator, ``expbuild-isolation-agent/`` is the agent's ``AgentApi``, ``kmock/``
is this test playing user and kubelet.
The chart is rendered by the real ``helm template`` and evaluated with
Kubernetes' RBAC semantics (``rbac.Authorizer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import kmock as kmock_lib
import pytest

from expbuild_isolation.agent.api import AgentApi
from expbuild_isolation.agent.node import AgentSettings, NodeAgent
from expbuild_isolation.api.task import IsolationLevel
from expbuild_isolation.controller.cluster import _COLLECTIONS as CLUSTER_COLLECTIONS
from expbuild_isolation.controller.cluster import Cluster
from expbuild_isolation.kube.config import OperatorConfig
from expbuild_isolation.worker.config import WorkerConfig
from tests.agent.conftest import AGENTS_NS, CGROUP_PARENT, LEASES, declare_leases
from tests.agent.test_agent import advertise, placed, sh
from tests.controller.conftest import (
    ALL_VERBS, CONFIGMAPS, JOBS, NETPOLS, NS, PODS, POLICIES, TASKS, Api, declare_resources, eventually,
    running_operator,
    task_body,
)
from tests.controller.test_operator import job_pod, kubelet_completes

from .chart import HELM, NO_HELM, render_chart
from .rbac import Authorizer, Permission, permission_of

RELEASE = "expbuild-isolation"
OPERATOR_SA, AGENT_SA = f"{RELEASE}-operator", f"{RELEASE}-agent"
CILIUM = "/apis/cilium.io/v2/namespaces/ci/ciliumnetworkpolicies"

pytestmark = pytest.mark.skipif(HELM is None, reason=NO_HELM)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the agent runs tasks with the namespace executor (root)")

# Granted, never recorded here, each with why it is still needed. A new grant nobody uses fails the test.
# e.g. ("get", "kopf.dev/kopfpeerings"): "kopf's documented peering RBAC (kopf 1.45 itself never GETs it)".
UNUSED_OPERATOR_GRANTS: dict[tuple[str, str], str] = {}
UNUSED_AGENT_GRANTS: dict[tuple[str, str], str] = {}
# API client methods no scenario runs, each with why.
NEVER_CALLED: dict[str, str] = {
    "AgentApi.replace": "no caller: the agent patches, never PUTs (so it needs no update verb)",
}
# Recorded, yet the code carries on without it: a chart may leave it out.
OPTIONAL: dict[tuple[str, str, str], str] = {}


@dataclass
class Recording:
    operator: set[Permission] = field(default_factory=set)
    agent: set[Permission] = field(default_factory=set)
    peering: set[Permission] = field(default_factory=set)  # the operator's extra calls with replicas > 1

    def add(self, server: Any, *, peering: bool = False) -> None:
        for request in list(server):
            sender = sender_of(request.headers.get("User-Agent", ""))
            if sender is not None:
                used = permission_of(str(request.method.value), request.url.path, dict(request.params))
                getattr(self, "peering" if peering else sender).add(used)


def sender_of(user_agent: str) -> str | None:
    if user_agent.startswith(("kopf/", "expbuild-isolation-operator/")):
        return "operator"
    if user_agent.startswith("expbuild-isolation-agent/"):
        return "agent"
    if user_agent.startswith("kmock/"):
        return None  # this test, as user or kubelet
    raise AssertionError(f"a request from an unknown client: {user_agent!r}")


# --- recording ---------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def emulator() -> AsyncIterator[Any]:
    async with kmock_lib.KubernetesEmulator() as server, kmock_lib.Server(server):
        declare_resources(server)  # (with the task namespace, and KMock taught to serve Namespace objects)
        declare_leases(server)
        server.resources["cilium.io/v2/ciliumnetworkpolicies"] = kmock_lib.ResourceInfo(
            kind="CiliumNetworkPolicy", namespaced=True, verbs=ALL_VERBS)
        yield server


async def phase(api: Api, name: str, *phases: str, timeout: float = 20) -> dict[str, Any]:
    async def reached() -> Any:
        task = await api.get(f"{TASKS}/{name}")
        return task if task and (task.get("status") or {}).get("phase") in phases else None
    return await eventually(reached, timeout=timeout, what=f"{name} in {phases}")


async def job_of(api: Api, name: str) -> Any:
    return await eventually(lambda: api.get(f"{JOBS}/xt-{name}"), what=f"the Job of {name}")


async def runs_to_success(api: Api) -> None:
    """A Job task with inline and ConfigMap inputs and outputs, through Running to Succeeded (pods/log read)."""
    await api.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap",
                                  "metadata": {"name": "settings", "namespace": NS}, "data": {"k": "v"}})
    await api.create(TASKS, task_body("hello", outputs={"paths": ["out/app"]}, inputs=[
        {"path": "a.txt", "content": "A"}, {"path": "cfg", "configMap": {"name": "settings"}}]))
    await job_of(api, "hello")
    await api.create(PODS, await job_pod(api, "hello", {"running": {"startedAt": "2025-03-01T12:00:02Z"}}))
    await phase(api, "hello", "Running")
    report = '{"v":1,"exit":0,"cg":2,"cpu_us":5,"mem":1,"trunc":0,"out":[[0,"%s",3,0]]}' % ("c" * 64)
    await kubelet_completes(api, "hello", report)
    await phase(api, "hello", "Succeeded")


async def fails(api: Api) -> None:
    await api.create(TASKS, task_body("fails", network={"policy": "Restricted", "allow": ["10.0.0.0/8:443"]}))
    await job_of(api, "fails")
    done = {"terminated": {"exitCode": 3, "reason": "Error", "startedAt": "2025-03-01T12:00:02Z",
                           "finishedAt": "2025-03-01T12:00:05Z"}}
    await api.create(PODS, await job_pod(api, "fails", done, phase="Failed"))
    await api.patch(f"{JOBS}/xt-fails", {"status": {"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}})
    await phase(api, "fails", "Failed")


async def fqdn_policy(api: Api) -> None:
    """Hostnames in network.allow: a CiliumNetworkPolicy beside the NetworkPolicy (fqdnPolicies)."""
    await api.create(TASKS, task_body("fqdn", network={"policy": "Restricted", "allow": ["example.com:443"]}))
    await eventually(lambda: api.get(f"{CILIUM}/xt-fqdn-fqdn"), what="the Cilium policy")


async def adopts_what_it_created_before(api: Api) -> None:
    """Objects of the task that exist already (a restart mid-create) are read back after the 409 and adopted."""
    task = task_body("adopt", inputs=[{"path": "a.txt", "content": "A"}],
                     network={"policy": "Restricted", "allow": ["example.com:443"]})
    owner = {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask", "name": "adopt", "uid": "uid-adopt",
             "controller": True}
    for path, api_version, kind, name in ((CONFIGMAPS, "v1", "ConfigMap", "xt-adopt-inputs"),
                                          (NETPOLS, "networking.k8s.io/v1", "NetworkPolicy", "xt-adopt"),
                                          (CILIUM, "cilium.io/v2", "CiliumNetworkPolicy", "xt-adopt-fqdn"),
                                          (JOBS, "batch/v1", "Job", "xt-adopt")):
        await api.create(path, {"apiVersion": api_version, "kind": kind, "metadata": {
            "name": name, "namespace": NS, "ownerReferences": [owner]}})
    await api.create(TASKS, task)
    await phase(api, "adopt", "Scheduled")


async def deleted_and_cancelled(api: Api) -> None:
    for name in ("gone", "stopme"):
        await api.create(TASKS, task_body(name))
    await phase(api, "gone", "Scheduled")
    await api.delete(f"{TASKS}/gone")  # its Job goes by garbage collection (owner reference; KMock has none)
    await eventually(lambda: _absent(api, f"{TASKS}/gone"), what="gone to go")
    await phase(api, "stopme", "Scheduled")
    await api.patch(f"{TASKS}/stopme", {"spec": {"cancel": True}})
    await phase(api, "stopme", "Cancelled")


async def refused(api: Api) -> None:
    """An invalid task (Error + Event) and a name squatted by someone else's Job (read after the 409)."""
    await api.create(TASKS, task_body("evil", image="docker.io/evil/miner:latest"))
    await api.create(JOBS, {"apiVersion": "batch/v1", "kind": "Job", "metadata": {
        "name": "xt-squat", "namespace": NS, "ownerReferences": [
            {"apiVersion": "v1", "kind": "Pod", "name": "x", "uid": "someone-else", "controller": True}]}})
    await api.create(TASKS, task_body("squat"))
    await phase(api, "evil", "Error")
    await phase(api, "squat", "Error")


async def goes_to_agents(api: Api) -> None:
    """Placement reads the agents' Leases; a lost agent is noticed."""
    await advertise(api, "n9", namespace=IsolationLevel.CONTAINER)
    await api.create(TASKS, task_body("placed", isolation={"executor": "namespace"}))
    await eventually(lambda: _labelled(api, "placed"), what="placed labelled for its node")
    await api.delete(f"{LEASES}/expbuild-agent-n9")  # the agent is gone before it claimed it
    await phase(api, "placed", "Error")


async def fence_restored(api: Api) -> None:
    """The shared deny-all NetworkPolicy is watched and put back when someone opens it."""
    await api.create(TASKS, task_body("fence"))
    await job_of(api, "fence")
    await api.patch(f"{NETPOLS}/expbuild-isolation-deny-all", {"spec": {"egress": [{}]}})

    async def closed() -> bool:
        policy = await api.get(f"{NETPOLS}/expbuild-isolation-deny-all")
        return bool(policy) and not policy["spec"].get("egress")
    await eventually(closed, what="the fence closed again")


async def policy_refuses(api: Api) -> None:
    """An ExecutionPolicy (listed at startup, then watched) refuses a task; the namespaces' labels are watched."""
    await api.create(POLICIES, {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionPolicy",
                                "metadata": {"name": "gvisor-only"},  # (no other scenario names a RuntimeClass)
                                "spec": {"isolation": {"runtimeClasses": ["gvisor"]}}})
    await asyncio.sleep(0.5)  # the policy's watch event
    await api.create(TASKS, task_body("refused-by-policy", isolation={"runtimeClassName": "runc-gpu"}))
    await phase(api, "refused-by-policy", "Error")


async def _absent(api: Api, path: str) -> bool:
    return await api.get(path) is None


async def _labelled(api: Api, name: str) -> Any:
    task = await api.get(f"{TASKS}/{name}")
    return task if "expbuild.io/node" in (task["metadata"].get("labels") or {}) else None


OPERATOR_SCENARIOS = (runs_to_success, fails, fqdn_policy, adopts_what_it_created_before, deleted_and_cancelled,
                      refused, goes_to_agents, fence_restored, policy_refuses)


async def record_operator(recording: Recording, namespaces: list[str]) -> None:
    config = OperatorConfig(namespaces=namespaces, allowed_images=["localhost/*"], metrics_port=0,
                            resync_seconds=3600, image_pull_grace_seconds=0, agent_namespace=AGENTS_NS,
                            agent_check_seconds=0.3, fqdn_policies=True)
    async with emulator() as server:
        api = Api(server)
        async with running_operator(server, config):
            await asyncio.gather(*(scenario(api) for scenario in OPERATOR_SCENARIOS))
        recording.add(server)


async def record_peering(recording: Recording, namespaces: list[str]) -> None:
    """kopf peering (``--peering <release>``, replicas > 1): the peering object is created and kept alive."""
    config = OperatorConfig(namespaces=namespaces, metrics_port=0, resync_seconds=3600, agent_namespace=AGENTS_NS)
    async with emulator() as server:
        info = kmock_lib.ResourceInfo
        server.resources["kopf.dev/v1/kopfpeerings"] = info(kind="KopfPeering", namespaced=True, verbs=ALL_VERBS)
        server.resources["kopf.dev/v1/clusterkopfpeerings"] = info(kind="ClusterKopfPeering", namespaced=False,
                                                                   verbs=ALL_VERBS)
        # No peering object yet: the operator creates it (controller.run.ensure_peering), then kopf patches it.
        async with running_operator(server, config, peering=RELEASE):
            await eventually(lambda: _peered(server), what="kopf to announce itself in the peering object")
        recording.add(server, peering=True)


async def _peered(server: Any) -> bool:
    return any(r.method.value == "PATCH" and "kopfpeerings/" in r.url.path for r in list(server))


@contextlib.asynccontextmanager
async def running_agent(server: Any, work: Path, namespaces: list[str]) -> AsyncIterator[NodeAgent]:
    config = WorkerConfig(work_dir=work, max_concurrent_tasks=4,
                          executor={"type": "namespace", "namespace": {"cgroup_parent": CGROUP_PARENT}})
    settings = AgentSettings(node="n1", namespace=AGENTS_NS, task_namespaces=namespaces, poll_seconds=0.1,
                             renew_seconds=0.2, seccomp_dir=None)
    api = AgentApi(str(server.url))
    agent = NodeAgent(api, config, settings)
    run = asyncio.create_task(agent.run())
    try:
        await eventually(lambda: _started(agent, run), what="the agent to start")
        await eventually(lambda: _renewed_twice(server), what="the agent to renew its Lease")
        yield agent
    finally:
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        await api.close()


async def _started(agent: NodeAgent, run: asyncio.Task[None]) -> bool:
    if run.done():
        run.result()
    return agent.started.is_set()


async def _renewed_twice(server: Any) -> bool:
    return any(r.method.value == "PATCH" and r.url.path.startswith(LEASES) for r in list(server))


async def record_agent(recording: Recording, namespaces: list[str], work: Path) -> None:
    """Claim, ConfigMap inputs, status and events of a run; a restart ending the task it left behind."""
    async with emulator() as server:
        api = Api(server)
        await api.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "settings", "namespace": NS}, "data": {"k": "v"}})
        await api.create(TASKS, placed("ran", "n1", **sh("cat cfg/k", inputs=[
            {"path": "cfg", "configMap": {"name": "settings"}}])))
        await api.create(TASKS, placed("long", "n1", **sh("sleep 30")))
        async with running_agent(server, work, namespaces):
            await phase(api, "ran", "Succeeded", "Failed", timeout=30)
            await phase(api, "long", "Running", timeout=30)
        async with running_agent(server, work, namespaces):
            await phase(api, "long", "Error", timeout=10)
        recording.add(server)


def api_methods(cls: type) -> list[str]:
    """The coroutines of an API client class that send requests (``call`` is what they all go through)."""
    return [name for name, value in vars(cls).items()
            if inspect.iscoroutinefunction(value) and not name.startswith("_") and name not in ("call", "close")]


@contextlib.contextmanager
def counting_calls(called: set[str]) -> Iterator[None]:
    """Note every ``Cluster``/``AgentApi`` method that runs (proof the scenarios reach each call site)."""
    def counted(cls: type, name: str) -> Any:
        original = getattr(cls, name)

        @functools.wraps(original)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            called.add(f"{cls.__name__}.{name}")
            return await original(*args, **kwargs)
        return wrapper
    with contextlib.ExitStack() as stack:
        for cls in (Cluster, AgentApi):
            for name in api_methods(cls):
                stack.enter_context(mock.patch.object(cls, name, counted(cls, name)))
        yield


@dataclass
class Recorded:
    modes: dict[str, Recording]   # cluster-wide, and only the ``ci`` namespace watched
    called: set[str]              # "Cluster.log_tail", ...


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """Every permission used, per mode, recorded once for the module."""
    modes = {"clusterwide": [], "namespaced": [NS]}
    result = Recorded({mode: Recording() for mode in modes}, set())

    async def record() -> None:
        for mode, namespaces in modes.items():
            await record_operator(result.modes[mode], namespaces)
            await record_peering(result.modes[mode], namespaces)
            if os.geteuid() == 0:
                await record_agent(result.modes[mode], namespaces, tmp_path_factory.mktemp(f"agent-{mode}"))
    with counting_calls(result.called):
        asyncio.run(record())
    return result


# --- the promises ------------------------------------------------------------------------------------------


MODES = {"clusterwide": {}, "namespaced": {"watchNamespaces": [NS]}}
# The operator with every optional path on: Cilium policies, and kopf peering (replicas > 1).
OPERATOR_VARIANTS = {"standalone": {"fqdnPolicies": True}, "peering": {"fqdnPolicies": True, "replicas": 2}}


@functools.lru_cache(maxsize=None)
def _render(values: str) -> Authorizer:
    return Authorizer(render_chart(json.loads(values), namespace=AGENTS_NS, release=RELEASE))


def chart_for(mode: str, **values: Any) -> Authorizer:
    return _render(json.dumps({**MODES[mode], **values}, sort_keys=True))


def operator_calls(recording: Recording, variant: str) -> set[Permission]:
    return recording.operator | (recording.peering if variant == "peering" else set())


def missing(authorizer: Authorizer, account: str, used: set[Permission]) -> list[str]:
    denied = authorizer.denied(account, AGENTS_NS, used)
    return sorted({str(p.without_name()) for p in denied if (p.verb, p.group, p.resource) not in OPTIONAL})


def unused(authorizer: Authorizer, account: str, used: set[Permission],
           allowed: dict[tuple[str, str], str]) -> list[str]:
    return sorted({f"{verb} {what}: {grant}" for grant, verb, what in authorizer.unused(account, AGENTS_NS, used)
                   if (verb, what) not in allowed})


@pytest.mark.parametrize("variant", list(OPERATOR_VARIANTS))
@pytest.mark.parametrize("mode", list(MODES))
def test_the_operator_may_make_every_call_it_makes(recorded, mode, variant):
    used = operator_calls(recorded.modes[mode], variant)
    assert recorded.modes[mode].operator and recorded.modes[mode].peering, "nothing was recorded from the operator"
    authorizer = chart_for(mode, operator=OPERATOR_VARIANTS[variant])
    assert not missing(authorizer, OPERATOR_SA, used), missing(authorizer, OPERATOR_SA, used)


@needs_root
@pytest.mark.parametrize("mode", list(MODES))
def test_the_agent_may_make_every_call_it_makes(recorded, mode):
    used = recorded.modes[mode].agent
    assert used, "nothing was recorded from the agent"
    authorizer = chart_for(mode, agent={"enabled": True})
    assert not missing(authorizer, AGENT_SA, used), missing(authorizer, AGENT_SA, used)


@pytest.mark.parametrize("variant", list(OPERATOR_VARIANTS))
@pytest.mark.parametrize("mode", list(MODES))
def test_the_operator_is_granted_nothing_it_does_not_use(recorded, mode, variant):
    authorizer = chart_for(mode, operator=OPERATOR_VARIANTS[variant])
    extra = unused(authorizer, OPERATOR_SA, operator_calls(recorded.modes[mode], variant), UNUSED_OPERATOR_GRANTS)
    assert not extra, "granted, never used:\n" + "\n".join(extra)


@needs_root
@pytest.mark.parametrize("mode", list(MODES))
def test_the_agent_is_granted_nothing_it_does_not_use(recorded, mode):
    authorizer = chart_for(mode, agent={"enabled": True})
    extra = unused(authorizer, AGENT_SA, recorded.modes[mode].agent, UNUSED_AGENT_GRANTS)
    assert not extra, "granted, never used:\n" + "\n".join(extra)


def test_the_recording_reaches_every_api_call_site_of_the_code(recorded):
    sites = {f"{cls.__name__}.{name}" for cls in (Cluster, AgentApi) for name in api_methods(cls)}
    if os.geteuid() != 0:
        sites = {site for site in sites if not site.startswith("AgentApi.")}
    assert sites - recorded.called - set(NEVER_CALLED) == set(), "add a scenario that runs them"


def test_the_recording_touches_every_kind_the_operator_knows(recorded):
    """``cluster``'s table of collections: a kind added there needs a scenario here."""
    kinds = {permission_of("POST", path.format(ns=NS)).resource for path in CLUSTER_COLLECTIONS.values()}
    touched = {p.resource.split("/")[0] for mode in recorded.modes.values() for p in mode.operator | mode.peering}
    assert kinds - touched == set()


@pytest.mark.parametrize("mode", list(MODES))
def test_optional_paths_get_their_rights_only_when_switched_on(mode):
    plain = chart_for(mode)
    cilium = Permission("create", "cilium.io", "ciliumnetworkpolicies", NS)
    peering = Permission("patch", "kopf.dev", "kopfpeerings" if mode == "namespaced" else "clusterkopfpeerings",
                         NS if mode == "namespaced" else None, RELEASE)
    assert not plain.allowed(OPERATOR_SA, AGENTS_NS, cilium)
    assert not plain.allowed(OPERATOR_SA, AGENTS_NS, peering)
    assert not plain.chart_grants(AGENT_SA, AGENTS_NS), "the agent's RBAC is rendered without agent.enabled"


def test_the_permission_of_a_request_is_what_the_apiserver_asks():
    assert permission_of("GET", "/api/v1/pods", {"watch": "true"}) == Permission("watch", "", "pods")
    assert permission_of("GET", "/apis/batch/v1/watch/namespaces/ci/jobs") == Permission("watch", "batch", "jobs", NS)
    assert permission_of("GET", "/api/v1/namespaces/ci/pods/p/log") == Permission("get", "", "pods/log", NS, "p")
    assert permission_of("DELETE", f"{JOBS}") == Permission("deletecollection", "batch", "jobs", NS)
    assert permission_of("GET", "/api/v1/namespaces/ci") == Permission("get", "", "namespaces", None, NS)
    assert permission_of("PATCH", f"{TASKS}/t/status") == Permission("patch", "expbuild.io", "executiontasks/status",
                                                                    NS, "t")
    assert permission_of("GET", "/apis/batch/v1") == Permission("get", path="/apis/batch/v1")


def test_rbac_scopes_a_role_binding_to_its_namespace_and_honours_resource_names():
    def binding(kind: str, role_kind: str, namespace: str | None = None) -> dict[str, Any]:
        meta = {"name": "b", **({"namespace": namespace} if namespace else {})}
        return {"kind": kind, "metadata": meta, "roleRef": {"kind": role_kind, "name": "r"},
                "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "home"}]}
    rules = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["only"]},
             {"apiGroups": ["batch"], "resources": ["jobs", "jobs/status"], "verbs": ["list"]}]
    cluster_role = {"kind": "ClusterRole", "metadata": {"name": "r"}, "rules": rules}
    in_ci = Authorizer([cluster_role, binding("RoleBinding", "ClusterRole", NS)])
    everywhere = Authorizer([cluster_role, binding("ClusterRoleBinding", "ClusterRole")])
    jobs = Permission("list", "batch", "jobs", NS)
    assert in_ci.allowed("sa", "home", jobs) and not in_ci.allowed("sa", "home", Permission("list", "batch", "jobs"))
    assert everywhere.allowed("sa", "home", Permission("list", "batch", "jobs"))
    assert not everywhere.allowed("sa", "elsewhere", jobs)
    assert everywhere.allowed("sa", "home", Permission("get", "", "configmaps", NS, "only"))
    assert not everywhere.allowed("sa", "home", Permission("get", "", "configmaps", NS, "other"))
    assert not everywhere.allowed("sa", "home", Permission("list", "batch", "jobs/log", NS))
    assert everywhere.allowed("sa", "home", Permission("get", path="/apis"))  # discovery, from the bootstrap role
