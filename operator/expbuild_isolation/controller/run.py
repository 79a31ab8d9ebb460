"""``expbuild-isolation operator``: run the kopf operator until interrupted.

Credentials come from kopf's login: the pod's service account inside a
cluster, the kubeconfig (``KUBECONFIG`` or ``~/.kube/config``) outside; the
operator's own API calls reuse them. Settings come from ``EXPBUILD_*``
variables (see ``kube.config``); ``namespaces`` overrides
``EXPBUILD_NAMESPACES``; no namespaces means cluster-wide.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from .. import metrics
from ..kube.config import OperatorConfig
from .handlers import OperatorState, make_registry, remember_login


def build(config: OperatorConfig, login: Any) -> tuple[kopf.OperatorRegistry, kopf.Memo]:
    """The registry (handlers + ``login``) and the memo carrying the shared state."""
    registry = make_registry(config)
    state = OperatorState(config=config)

    async def login_and_remember(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = login(**kwargs)
        info = await info if asyncio.iscoroutine(info) else info
        return remember_login(state, info) if info is not None else None

    kopf.on.login(registry=registry, id="login")(login_and_remember)
    return registry, kopf.Memo(state=state)


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
    registry, memo = build(config, kopf.login_via_client)
    asyncio.run(kopf.operator(
        registry=registry, memo=memo, namespaces=config.namespaces, clusterwide=not config.namespaces,
        standalone=standalone or peering is None, peering_name=peering, liveness_endpoint=liveness,
    ))
