"""The operator against KMock's Kubernetes emulator: real kopf, real HTTP, no cluster.

The emulator is simple (no resourceVersion bumps, no Job controller, no
kubelet), so tests play those parts by posting Pods and patching Job status
themselves; correctness of the mapping is tested purely in tests/kube.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import kopf
import kmock as kmock_lib
import pytest
from kmock._internal import parsing as kmock_parsing

from expbuild_isolation.controller.run import build
from expbuild_isolation.kube.config import OperatorConfig

NS = "ci"
TASKS = "/apis/expbuild.io/v1alpha1/namespaces/ci/executiontasks"
JOBS = "/apis/batch/v1/namespaces/ci/jobs"
PODS = "/api/v1/namespaces/ci/pods"
CONFIGMAPS = "/api/v1/namespaces/ci/configmaps"
NETPOLS = "/apis/networking.k8s.io/v1/namespaces/ci/networkpolicies"
EVENTS = "/api/v1/namespaces/ci/events"
POLICIES = "/apis/expbuild.io/v1alpha1/executionpolicies"
NAMESPACES = "/api/v1/namespaces"
ALL_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
_kmock_parse_path = kmock_parsing.parse_path


def _parse_path(path: str) -> Any:
    """KMock 0.8's path parser, taught the Namespace objects it reads as namespaces: /api/v1/namespaces
    (the listing and watch) and /api/v1/namespaces/<name> (one namespace, e.g. to relabel it)."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
        return kmock_parsing.ParsedPath(group="", version="v1", plural="namespaces",
                                        name=parts[3] if len(parts) == 4 else None)
    return _kmock_parse_path(path)


def declare_resources(server: Any, namespaces: tuple[str, ...] = (NS,)) -> None:
    """The kinds the operator and the agent use, and the task namespaces (the operator watches namespaces)."""
    kmock_parsing.parse_path = _parse_path  # the KMock server runs in this process: teach it the listing
    info = kmock_lib.ResourceInfo
    server.resources["expbuild.io/v1alpha1/executiontasks"] = info(
        kind="ExecutionTask", singular="executiontask", namespaced=True, verbs=ALL_VERBS, shortnames={"xt"},
        subresources={"status"})
    server.resources["expbuild.io/v1alpha1/executionpolicies"] = info(
        kind="ExecutionPolicy", singular="executionpolicy", namespaced=False, verbs=ALL_VERBS)
    server.resources["v1/namespaces"] = info(kind="Namespace", namespaced=False, verbs=ALL_VERBS)
    server.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = info(
        kind="CustomResourceDefinition", namespaced=False, verbs={"get", "list", "watch"})
    server.resources["v1/events"] = info(kind="Event", namespaced=True, verbs=ALL_VERBS)
    server.resources["v1/pods"] = info(kind="Pod", namespaced=True, verbs=ALL_VERBS, subresources={"log", "status"})
    server.resources["v1/configmaps"] = info(kind="ConfigMap", namespaced=True, verbs=ALL_VERBS)
    server.resources["batch/v1/jobs"] = info(kind="Job", namespaced=True, verbs=ALL_VERBS, subresources={"status"})
    server.resources["networking.k8s.io/v1/networkpolicies"] = info(kind="NetworkPolicy", namespaced=True,
                                                                    verbs=ALL_VERBS)
    for namespace in namespaces:
        server.objects["v1/namespaces", None, namespace] = {"apiVersion": "v1", "kind": "Namespace",
                                                            "metadata": {"name": namespace}}


class Api:
    """A few verbs against the emulator, as a user or the kubelet would send them."""

    def __init__(self, server: Any) -> None:
        self.server = server

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        async with self.server.request(method, path, **kw) as response:
            data = await response.json(content_type=None)
            return data if response.status < 400 else None

    async def get(self, path: str) -> Any:
        return await self._json("GET", path)

    async def items(self, path: str) -> list[dict[str, Any]]:
        return (await self.get(path) or {}).get("items", [])

    async def create(self, path: str, body: dict[str, Any]) -> Any:
        return await self._json("POST", path, json=body)

    async def patch(self, path: str, body: dict[str, Any]) -> Any:
        return await self._json("PATCH", path, json=body, headers={"Content-Type": "application/merge-patch+json"})

    async def delete(self, path: str) -> Any:
        return await self._json("DELETE", path)

    def events_for(self, name: str) -> list[dict[str, Any]]:
        """Events posted about a task. Read from the request log: KMock stores no generateName objects."""
        return [req.data for req in list(self.server)
                if req.method == "POST" and req.url.path == EVENTS and isinstance(req.data, dict)
                and req.data.get("involvedObject", {}).get("name") == name]


def task_body(name: str, uid: str | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask",
            "metadata": {"name": name, "namespace": NS, "uid": uid or f"uid-{name}", "generation": 1, "resourceVersion": "1",
                         "creationTimestamp": "2025-03-01T12:00:00Z",
                         "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update"}]},
            "spec": {"image": "localhost/busybox:latest", "command": ["echo", "hello"]} | spec}


async def eventually(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """The first truthy value of ``check()`` (awaited when it is a coroutine), polled every 50 ms."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


@pytest.fixture
def operator_config() -> OperatorConfig:
    # Cluster-wide: KMock 0.8 cannot parse the /api/v1/namespaces listing kopf makes for namespace patterns.
    return OperatorConfig(allowed_images=["localhost/*", "registry.local/*"], metrics_port=0,
                          resync_seconds=3600, image_pull_grace_seconds=0)


@pytest.fixture
async def api(kmock: Any) -> Api:
    declare_resources(kmock)
    return Api(kmock)


@contextlib.asynccontextmanager
async def running_operator(server: Any, config: OperatorConfig, *, peering: str | None = None
                           ) -> AsyncIterator[None]:
    """kopf in its own thread and loop, as in production (kopf cancels foreign tasks of its loop on exit).

    ``peering`` names a kopf peering object to join (replicas > 1); None runs standalone.
    """
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=str(server.url).rstrip("/"), insecure=True)

    registry, memo = build(config, login, peering=peering)
    settings = kopf.OperatorSettings()
    settings.watching.reconnect_backoff = 0.1
    settings.networking.request_timeout = 10
    settings.peering.interval = 0.2
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=asyncio.run, name="kopf", daemon=True, args=(kopf.operator(
        registry=registry, memo=memo, settings=settings, namespaces=config.namespaces,
        clusterwide=not config.namespaces, standalone=peering is None, peering_name=peering,
        stop_flag=stop, ready_flag=ready),))
    thread.start()
    assert await asyncio.to_thread(ready.wait, 10), "the operator did not start within 10 seconds"
    try:
        yield
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 15)
        assert not thread.is_alive(), "the operator did not stop within 15 seconds"


@pytest.fixture
async def operator(kmock: Any, api: Api, operator_config: OperatorConfig) -> AsyncIterator[None]:
    async with running_operator(kmock, operator_config):
        yield


def forget_served_requests(server: Any) -> None:
    """Keep only in-flight requests in KMock's request log: the emulator's cost per request grows with it.

    KMock matches every request against its reactions (its own fallbacks and
    ours) by scanning the whole log of requests served so far
    (``RawHandler._handle`` -> ``View.__contains__`` -> ``Filter.__iter__``),
    so each request costs O(requests so far) and a run O(n^2): a few thousand
    requests in, the emulator sits at 100% CPU and the operator waits on it.
    Benchmarks and burst tests that read nothing from the log (they count with
    reactions instead) let a request leave it once served; the check by identity
    still finds the request being matched, so every reaction behaves as before.
    """
    base = type(server)

    class Forgetful(base):  # type: ignore[misc,valid-type]
        __slots__ = ()

        async def _handle(self, request: Any) -> Any:
            try:
                return await base._handle(self, request)
            finally:
                log = self._requests
                for index in range(len(log) - 1, -1, -1):
                    if log[index] is request:
                        del log[index]
                        break

    server.__class__ = Forgetful
