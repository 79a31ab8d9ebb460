"""``expbuild-isolation operator``: run the kopf operator until interrupted.

Credentials come from ``apiserver.login``: the pod's service account inside a
cluster, the kubeconfig (``KUBECONFIG`` or ``~/.kube/config``) outside; kopf's
watches and the operator's own API calls use the same. Settings come from ``EXPBUILD_*``
variables (see ``kube.config``); ``namespaces`` overrides
``EXPBUILD_NAMESPACES``; no namespaces means cluster-wide.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import kopf

from .. import metrics
from ..apiserver import login
from ..kube.config import OperatorConfig
from .handlers import load_tenancy, make_registry
from .state import OperatorState, remember_login


def build(config: OperatorConfig, login: Any, *, peering: str | None = None
          ) -> tuple[kopf.OperatorRegistry, kopf.Memo]:
    """The registry (handlers + ``login``) and the memo carrying the shared state.

    A startup handler reads the ExecutionPolicies, namespaces and tasks once before kopf starts watching
    (``handlers.load_tenancy``).

    With ``peering`` (replicas > 1) a startup handler first creates the peering
    object(s) kopf will use, if absent: kopf only patches an existing one, and
    without it every replica would believe it is alone and serve every task.
    """
    registry = make_registry(config)
    state = OperatorState(config=config)

    async def login_and_remember(**kwargs: Any) -> kopf.ConnectionInfo | None:
        async def again() -> kopf.ConnectionInfo | None:  # the operator's own calls meeting a 401 log in again
            info = login(**kwargs)
            return await info if asyncio.iscoroutine(info) else info

        info = await again()
        return await remember_login(state, info, relogin=again) if info is not None else None

    async def ensure_peering(logger: Any, **kwargs: Any) -> None:
        if state.cluster is None:  # startup handlers run before kopf's first API call logs in
            await login_and_remember(logger=logger, **kwargs)
        for obj in peering_objects(peering or "", config.namespaces):
            if await state.api.create_if_absent(obj):
                logger.info(f"created {obj['kind']} {peering!r} for kopf peering")

    async def load_policies(logger: Any, **kwargs: Any) -> None:
        if state.cluster is None:
            await login_and_remember(logger=logger, **kwargs)
        await load_tenancy(state)
        # Everything alive now (modules, kopf, pydantic's schemas: ~100,000 objects) lives as long as the
        # process: out of the collector's sight, a full collection during a burst scans only what the tasks
        # made. Measured on bench_operator's second burst of 20: collector time 95-105 ms -> 14-17 ms.
        gc.freeze()

    kopf.on.login(registry=registry, id="login")(login_and_remember)
    if peering:
        kopf.on.startup(registry=registry, id="peering")(ensure_peering)
    # Before any watch starts: no task is judged against policies the operator has not read yet.
    kopf.on.startup(registry=registry, id="tenancy")(load_policies)
    return registry, kopf.Memo(state=state)


def peering_objects(name: str, namespaces: list[str]) -> list[dict[str, Any]]:
    """kopf's peering object: one ClusterKopfPeering cluster-wide, else a KopfPeering per namespace."""
    if not namespaces:
        return [{"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}]
    return [{"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": name, "namespace": ns}}
            for ns in namespaces]


def run_operator(namespaces: list[str], *, liveness: str | None, peering: str | None, standalone: bool) -> None:
    """Run the operator in the foreground.

    ``liveness`` is kopf's probe endpoint (e.g. ``http://0.0.0.0:8081/healthz``);
    ``peering`` names the KopfPeering object for high availability (ignored
    when ``standalone``).
    """
    config = OperatorConfig.from_env()
    if namespaces:
        config = config.model_copy(update={"namespaces": list(namespaces)})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("expbuild.audit").setLevel(logging.INFO)
    if config.metrics_port:
        metrics.start_metrics_server(config.metrics_port)
    peering = None if standalone else peering
    registry, memo = build(config, login, peering=peering)
    asyncio.run(kopf.operator(
        registry=registry, memo=memo, namespaces=config.namespaces, clusterwide=not config.namespaces,
        standalone=standalone or peering is None, peering_name=peering, liveness_endpoint=liveness,
    ))
