"""The namespace's shared deny-all NetworkPolicy for isolated task pods: there before the first one, put back when touched."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ..kube import network
from .state import OperatorState, section


async def ensure_fence(state: OperatorState, namespace: str) -> None:
    """The namespace's shared deny-all NetworkPolicy exists as rendered (checked once per namespace and process;
    ``fence_changed`` puts it back when it is deleted or edited)."""
    if namespace in state.fenced:
        return
    if await state.api.ensure(network.render_shared_policy(namespace), network.shared_policy_intact):
        logging.getLogger(__name__).info("created the deny-all NetworkPolicy of namespace %s", namespace)
    state.fenced.add(namespace)


async def fence_changed(body: kopf.Body, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    """A shared deny-all policy was deleted or edited: put it back now, before a pod runs unfenced."""
    state: OperatorState = memo.state
    namespace = section(body, "metadata").get("namespace") or ""
    if namespace not in state.fenced:
        return  # not one this process relies on (yet): ensured before its first task
    if type == "DELETED" or not network.shared_policy_intact(dict(body)):
        state.fenced.discard(namespace)
        kopf.warn(body, reason="FenceRestored", message="the task pods' deny-all NetworkPolicy was changed or "
                                                         "deleted; the operator puts it back")
        await ensure_fence(state, namespace)
