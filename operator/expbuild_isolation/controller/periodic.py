"""The two operator-wide loops: the resync of unfinished tasks and the check of tasks placed on node agents."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import kopf

from ..api.task import Phase
from ..kube import placement
from ..kube.leases import (
    LEASE_API_VERSION,
    NODE_LABEL,
    agent_lease_name,
    claim_holder,
    claim_name,
    lease_is_fresh,
)
from ..kube.status import timestamp
from .lifecycle import place, plan_for, reject, resync
from .report import finished
from .state import OperatorState, now, readable, task_key


async def start_loops(memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Start the operator-wide periodic resync and agent check (one asyncio task each)."""
    state: OperatorState = memo.state
    state.loops = [
        asyncio.create_task(_periodic(state, state.config.resync_seconds, resync, agents_only=False, logger=logger),
                            name="expbuild-resync"),
        asyncio.create_task(_periodic(state, state.config.agent_check_seconds, agent_check, agents_only=True,
                                      logger=logger), name="expbuild-agent-lost"),
    ]


async def stop_loops(memo: kopf.Memo, **_: Any) -> None:
    state: OperatorState = memo.state
    loops, state.loops = state.loops, []
    for loop in loops:
        loop.cancel()
    await asyncio.gather(*loops, return_exceptions=True)


async def _periodic(state: OperatorState, interval: float, check: Any, *, agents_only: bool, logger: Any,
                    concurrency: int = 16) -> None:
    """Every ``interval`` seconds run ``check`` on each unfinished task (agents' tasks only if asked)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(key: str) -> None:
        namespace, name = key.split("/", 1)
        async with gate:
            if key not in state.unfinished:  # finished or deleted meanwhile
                return
            try:
                await check(state, namespace, name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next round retries, as a failed kopf timer would
                logger.warning(f"periodic {check.__name__} of {key} failed: {exc!r}")

    while True:
        await asyncio.sleep(interval)
        keys = [key for key, on_agent in list(state.unfinished.items()) if on_agent or not agents_only]
        if keys:
            # Each check runs in a copy of a kopf handler's context, so its Events are posted.
            ctx = state.handler_context or contextvars.copy_context()
            await asyncio.gather(*(asyncio.create_task(one(key), context=ctx.copy()) for key in keys))


async def agent_check(state: OperatorState, namespace: str, name: str) -> None:
    """A task placed on an agent whose Lease expired: AgentLost if claimed, else placed again."""
    async with state.lock(task_key(namespace, name)):
        fresh = await state.api.get_task(namespace, name)
        task = readable(fresh) if fresh is not None else None
        if fresh is None or task is None or NODE_LABEL not in task.metadata.labels:
            return
        node = task.status.node or task.metadata.labels.get(NODE_LABEL, "")
        if task.status.phase.finished or task.spec.cancel:
            return
        lease = await state.api.get(LEASE_API_VERSION, "Lease", state.config.agent_namespace, agent_lease_name(node))
        if lease is not None and lease_is_fresh(lease, now()):
            return
        last = ((lease or {}).get("spec") or {}).get("renewTime") or "never"
        claim = await state.api.get(LEASE_API_VERSION, "Lease", task.metadata.namespace, claim_name(task.metadata.uid))
        if claim is None:
            plan = await plan_for(state, task)
            if plan.kind == "agent":
                await place(state, task, fresh, plan)
                return
            if plan.kind == "job":  # cannot happen while placement is a function of the spec; never a 2nd path
                plan = placement.Plan("error", reason="AgentLost", message=f"the node agent on {node} is gone "
                                      f"before it started the task")
            await reject(state, task, fresh, plan.reason, plan.message)
            return
        message = (f"the node agent {claim_holder(claim)} on {node} stopped renewing its Lease "
                   f"{agent_lease_name(node)} (last renewed {last}); the task's processes are lost with it")
        patch = {"phase": Phase.ERROR.value, "reason": "AgentLost", "message": message, "node": node,
                 "completionTime": timestamp(now()), "observedGeneration": task.metadata.generation}
        await state.api.patch_task_status(task.metadata.namespace, task.metadata.name, patch)
        kopf.event(fresh, type="Warning", reason="AgentLost", message=message[:1024])
        finished(state, task, patch)
