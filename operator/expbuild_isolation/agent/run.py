"""``expbuild-isolation agent``: log in like the operator, serve /healthz and /metrics, run the NodeAgent."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..apiserver import login as kube_login
from ..worker.config import WorkerConfig
from .api import AgentApi
from .node import AgentSettings, NodeAgent, now


def health_app(agent: NodeAgent) -> web.Application:
    """/healthz: 200 while the agent's Lease was renewed within its duration; /metrics: Prometheus text."""
    async def healthz(_: web.Request) -> web.Response:
        last = agent.last_renewal
        fresh = last is not None and now() - last < timedelta(seconds=agent.settings.lease_seconds)
        return web.Response(status=200 if fresh else 503, text="ok\n" if fresh else "lease not renewed\n")

    async def metrics_page(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    return app


async def serve_agent(api: AgentApi, config: WorkerConfig, settings: AgentSettings, *, port: int = 0) -> None:
    agent = NodeAgent(api, config, settings)
    runner = None
    if port:
        runner = web.AppRunner(health_app(agent))
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", port).start()
    try:
        await agent.run()
    finally:
        if runner is not None:
            await runner.cleanup()
        await api.close()


def run_agent(config: WorkerConfig, settings: AgentSettings, *, metrics_port: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("expbuild.audit").setLevel(logging.INFO)

    def login() -> Any:
        return kube_login(logger=logging.getLogger("expbuild.agent"))

    async def main() -> None:
        info = login()
        if info is None:
            raise SystemExit("expbuild-isolation agent: no Kubernetes credentials (in-cluster or kubeconfig)")
        # A 401 logs in again: the kubelet rotates the pod's service-account token, and the file read at start
        # stops being accepted once the old token expires.
        await serve_agent(AgentApi.from_connection(info, relogin=login), config, settings, port=metrics_port)

    asyncio.run(main())
