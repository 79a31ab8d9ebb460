"""Agents and the operator against KMock, with the real namespace executor underneath.

Each agent runs in the test's loop (the operator in its own thread, as in
tests/controller). Runs are counted by ``CountingExecutor``, a wrapper around the
real executor that the agent is given as its only backend, not by patching the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock as kmock_lib
import pytest

from expbuild_isolation.agent.api import AgentApi
from expbuild_isolation.agent.node import AgentSettings, NodeAgent
from expbuild_isolation.executors.config import NamespaceConfig
from expbuild_isolation.executors.namespace.executor import NamespaceExecutor
from expbuild_isolation.kube.config import OperatorConfig
from expbuild_isolation.worker.config import WorkerConfig
from tests.controller.conftest import ALL_VERBS, Api, declare_resources, running_operator

AGENTS_NS = "expbuild-system"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{AGENTS_NS}/leases"
CLAIMS = "/apis/coordination.k8s.io/v1/namespaces/ci/leases"
CGROUP_PARENT = "expbuild-test-agent"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the namespace executor needs root (namespaces, cgroups)")


class CountingExecutor:
    """The real executor, counting the tasks it was asked to execute."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.runs = inner, inner.name, []

    def isolation_level(self):  # type: ignore[no-untyped-def]
        return self.inner.isolation_level()

    def capabilities(self):  # type: ignore[no-untyped-def]
        return self.inner.capabilities()

    async def health_check(self) -> None:
        await self.inner.health_check()

    async def warmup(self) -> None:
        await self.inner.warmup()

    async def execute(self, request):  # type: ignore[no-untyped-def]
        self.runs.append(request.task_id)
        return await self.inner.execute(request)


def declare_leases(server: Any) -> None:
    server.resources["coordination.k8s.io/v1/leases"] = kmock_lib.ResourceInfo(
        kind="Lease", namespaced=True, verbs=ALL_VERBS)


@pytest.fixture
async def api(kmock: Any) -> Api:
    declare_resources(kmock)
    declare_leases(kmock)
    return Api(kmock)


@pytest.fixture
def operator_config() -> OperatorConfig:
    return OperatorConfig(allowed_images=["localhost/*"], metrics_port=0, resync_seconds=3600,
                          image_pull_grace_seconds=0, agent_namespace=AGENTS_NS, agent_check_seconds=0.3)


@pytest.fixture
async def operator(kmock: Any, api: Api, operator_config: OperatorConfig) -> AsyncIterator[None]:
    async with running_operator(kmock, operator_config):
        yield


@pytest.fixture
def worker_config(tmp_path: Path) -> WorkerConfig:
    return WorkerConfig(work_dir=tmp_path / "work", max_concurrent_tasks=4,
                        executor={"type": "namespace", "namespace": {"cgroup_parent": CGROUP_PARENT}})


@pytest.fixture
def counting() -> CountingExecutor:
    return CountingExecutor(NamespaceExecutor(NamespaceConfig(cgroup_parent=CGROUP_PARENT)))


@contextlib.asynccontextmanager
async def running_agent(server: Any, config: WorkerConfig, node: str, *, agent_id: str = "",
                        counting: CountingExecutor | None = None, seccomp_dir: Path | None = None,
                        lease_seconds: int = 15, poll_seconds: float = 0.1,
                        api_class: type[AgentApi] = AgentApi, **more: Any) -> AsyncIterator[NodeAgent]:
    """An agent on ``node``; it runs tasks only through ``counting`` when given, else its config's chain.

    ``more`` goes to AgentSettings (allow_host_executor, policy, ...), or ``capacity=`` to the agent.
    """
    capacity = more.pop("capacity", None)
    settings = AgentSettings(node=node, namespace=AGENTS_NS, agent_id=agent_id, poll_seconds=poll_seconds,
                             renew_seconds=0.5, lease_seconds=lease_seconds, seccomp_dir=seccomp_dir, **more)
    api = api_class(str(server.url))
    agent = NodeAgent(api, config, settings, executors=[counting] if counting else None, capacity=capacity)
    run = asyncio.create_task(agent.run())
    started = asyncio.create_task(agent.started.wait())
    await asyncio.wait([run, started], timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if run.done():
        run.result()  # raises what stopped it
    assert agent.started.is_set(), "the agent did not start within 20 seconds"
    try:
        yield agent
    finally:
        run.cancel()
        started.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        await api.close()
