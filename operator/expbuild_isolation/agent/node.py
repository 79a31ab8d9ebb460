"""One node's agent: advertise, claim, run, report. See the package docstring for the why.

What it may run is decided in ``admission`` and ``tenancy``, how it tells the cluster in ``report``; this
module is the loops that tie them together, which keeps it near 400 lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import metrics
from ..api.judge import Judgement
from ..api.task import ExecutionTask, IsolationLevel, Phase
from ..executors.base import ExecutorUnavailable, TaskExecutor
from ..kube.leases import (
    NODE_LABEL, AgentAdvert, claim_holder, label_value, render_agent_lease, render_claim,
)
from ..kube.status import task_conditions, timestamp
from ..worker.chain import build_chain
from ..worker.config import WorkerConfig
from ..worker.config_maps import ConfigMapError
from ..worker.local import LOG_TAIL_CHARS, describe_task_error, run_task
from . import tenancy
from .admission import AgentPolicy, NodeCapacity, Refusal, floor, refusal, runnable
from .api import AgentApi, ApiError, config_map_path, leases_path, tasks_path
from .report import Reporter

LOG = logging.getLogger("expbuild.agent")
DEFAULT_SECCOMP_DIR = Path("/var/lib/kubelet/seccomp/profiles")
WATCH_LIVED_SECONDS = 5.0  # a watch that lasted this long ended normally: list and watch again at once
WATCH_BACKOFF_SECONDS = (0.2, 30.0)  # when watches keep ending sooner: the first delay, doubling up to the second


def now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class AgentSettings:
    node: str
    namespace: str                       # where the agent's own Lease lives (the operator's namespace)
    agent_id: str = ""                   # holderIdentity of its Lease and claims; default: the node name
    task_namespaces: list[str] = field(default_factory=list)  # empty: every namespace
    poll_seconds: float = 30.0           # the resync: a full listing as a safety net under the watch
    watch_timeout_seconds: int = 300     # the server ends each watch after this (then: relist, watch again)
    renew_seconds: float = 5.0
    lease_seconds: int = 15
    health_seconds: float = 30.0
    seccomp_dir: Path | None = DEFAULT_SECCOMP_DIR  # None: do not install profiles
    log_tail_chars: int = LOG_TAIL_CHARS
    allow_host_executor: bool = False    # an administrator's explicit opt-in; never the default
    policy: AgentPolicy = field(default_factory=AgentPolicy)

    @property
    def identity(self) -> str:
        return self.agent_id or self.node


def agent_executors(config: WorkerConfig, settings: AgentSettings) -> list[TaskExecutor]:
    """The configured chain, without the host executor unless an administrator allowed it explicitly.

    The host executor runs a task on the node itself (Process isolation): inside an agent that is root next
    to the kubelet, so a worker file's default chain never brings it in by itself.
    """
    chain = build_chain(config)
    if not settings.allow_host_executor and any(executor.name == "host" for executor in chain):
        LOG.warning("the host executor is configured but not offered: an agent runs it only with "
                    "--allow-host-executor")
        chain = [executor for executor in chain if executor.name != "host"]
    return chain


class NodeAgent:
    """``await agent.run()`` until cancelled. It runs tasks only through ``executors`` (default: from the config).

    It advertises the healthy ones and never runs anything else: a task naming another backend is refused.
    """

    def __init__(self, api: AgentApi, config: WorkerConfig, settings: AgentSettings, *,
                 executors: Sequence[TaskExecutor] | None = None, capacity: NodeCapacity | None = None) -> None:
        self.api, self.config, self.settings = api, config, settings
        chosen = agent_executors(config, settings) if executors is None else list(executors)
        self._executors = {executor.name: executor for executor in chosen}
        self.capacity = capacity or NodeCapacity.of_this_machine()
        self.healthy: list[str] = []
        self.seccomp_profiles: list[str] = []
        self.running: dict[str, asyncio.Task[None]] = {}  # task uid -> its run
        self.report = Reporter(api, settings.node, settings.identity)
        self._starved = False  # a placed task waited for a slot: relist as soon as one frees
        self._resync_now = asyncio.Event()
        self.last_renewal: datetime | None = None
        self.started = asyncio.Event()  # set once recovered and advertised

    @property
    def free_slots(self) -> int:
        return max(0, self.config.max_concurrent_tasks - len(self.running))

    # --- the loops ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            self.install_seccomp_profiles()
            await self.warm_up()
            await self.check_health()
            await self.recover()
            await self.renew()
            self.started.set()
            await asyncio.gather(self._every(self.settings.renew_seconds, self.renew),
                                 self._every(self.settings.health_seconds, self.check_health),
                                 self._resync(),
                                 *(self._watch(namespace) for namespace in self._task_scopes()))
        finally:
            runs = list(self.running.values())
            for run in runs:
                run.cancel()
            await asyncio.gather(*runs, return_exceptions=True)

    async def _every(self, seconds: float, step: Callable[[], Any], *, wake: asyncio.Event | None = None) -> None:
        while True:
            if wake is None:
                await asyncio.sleep(seconds)
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), seconds)
                wake.clear()
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one failed round must not stop the agent; the next one retries
                metrics.RECONCILE_ERRORS.inc()
                LOG.warning("%s failed: %s", getattr(step, "__name__", step), exc)

    async def _resync(self) -> None:
        """The safety net under the watches: a full listing every ``poll_seconds``, and when a slot frees."""
        await self._every(self.settings.poll_seconds, self.poll, wake=self._resync_now)

    async def _watch(self, namespace: str | None) -> None:
        """React to this scope's tasks at once: list, then watch from the listing's resourceVersion; again.

        Whatever ends a watch (the server's timeoutSeconds, 410 Gone, a dropped connection, an error) is
        followed by a fresh listing, so nothing placed meanwhile is missed; at once, unless watches keep
        ending quickly, which backs off (``WATCH_BACKOFF_SECONDS``).
        """
        loop, quick_ends = asyncio.get_running_loop(), 0
        while True:
            began = loop.time()
            try:
                version = await self._list(namespace)
                async for event in self.api.watch(tasks_path(namespace), self._labels(), version,
                                                  timeout_seconds=self.settings.watch_timeout_seconds):
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self.consider(event["object"])
                    elif event.get("type") == "DELETED":
                        self.deleted(event["object"])
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.status == 410:
                    LOG.info("watch of tasks in %s: %s; listing again", namespace or "all namespaces", exc)
                else:
                    self._watch_failed(namespace, exc)
            except Exception as exc:  # a dropped connection, a bad event: list again, watch again
                self._watch_failed(namespace, exc)
            quick_ends = 0 if loop.time() - began >= WATCH_LIVED_SECONDS else quick_ends + 1
            if quick_ends > 1:
                first, most = WATCH_BACKOFF_SECONDS
                await asyncio.sleep(min(most, first * 2 ** (quick_ends - 2)))

    @staticmethod
    def _watch_failed(namespace: str | None, exc: Exception) -> None:
        metrics.RECONCILE_ERRORS.inc()
        LOG.warning("watch of tasks in %s failed: %s", namespace or "all namespaces",
                    str(exc) or type(exc).__name__)

    # --- advertising --------------------------------------------------------------------------------------

    def install_seccomp_profiles(self) -> None:
        """Write the project's profiles for the kubelet; advertise only those whose file now exists."""
        directory = self.settings.seccomp_dir
        if directory is None:
            return
        from ..executors.seccomp import PROFILES, render_json
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for name in PROFILES:
                path = directory / f"{name}.json"
                text = render_json(name)
                if not path.exists() or path.read_text() != text:
                    tmp = path.with_suffix(".json.tmp")
                    tmp.write_text(text)
                    tmp.replace(path)  # the kubelet never reads a half-written profile
        except OSError as exc:
            LOG.warning("seccomp profiles not installed in %s: %s", directory, exc)
        self.seccomp_profiles = [name for name in PROFILES if (directory / f"{name}.json").is_file()]

    async def warm_up(self) -> None:
        """Each executor's start (images, pools), which first sweeps what a previous agent left: containers
        of a worker killed mid-task run on until a starting one removes them. A failure here is the health
        check's to report; the agent starts all the same."""
        for name, executor in self._executors.items():
            try:
                await executor.warmup()
            except Exception as exc:  # noqa: BLE001 - a daemon down at start must not keep the agent down
                LOG.warning("executor %s: warmup failed: %s", name, exc)

    async def check_health(self) -> None:
        healthy = []
        for name, executor in self._executors.items():
            try:
                await executor.health_check()
                healthy.append(name)
                metrics.EXECUTOR_HEALTHY.labels(executor=name).set(1)
            except ExecutorUnavailable as exc:
                LOG.info("executor %s unavailable: %s", name, exc)
                metrics.EXECUTOR_HEALTHY.labels(executor=name).set(0)
        self.healthy = healthy

    def advert(self) -> AgentAdvert:
        levels = {name: self._executors[name].isolation_level() for name in self.healthy}
        return AgentAdvert(node=self.settings.node, holder=self.settings.identity, executors=tuple(self.healthy),
                           levels=levels, free_slots=self.free_slots, seccomp_profiles=tuple(self.seccomp_profiles),
                           duration_seconds=self.settings.lease_seconds, cpu_cores=self.capacity.cpu_cores,
                           memory_bytes=self.capacity.memory_bytes)

    async def renew(self) -> None:
        at = now()
        lease = render_agent_lease(self.advert(), self.settings.namespace, at)
        try:
            await self.api.create(leases_path(self.settings.namespace), lease)
        except ApiError as exc:
            if exc.status != 409:
                raise
            path = leases_path(self.settings.namespace, lease["metadata"]["name"])
            await self.api.merge_patch(path, {"metadata": {"labels": lease["metadata"]["labels"],
                                                           "annotations": lease["metadata"]["annotations"]},
                                              "spec": lease["spec"]})
        self.last_renewal = at

    # --- restart ------------------------------------------------------------------------------------------

    async def recover(self) -> None:
        """End what this agent claimed before a restart and is not running now: AgentRestarted, never re-run."""
        claims = []
        for namespace in self.settings.task_namespaces or [None]:
            claims += await self.api.items(leases_path(namespace), {NODE_LABEL: label_value(self.settings.node)})
        for claim in claims:
            if claim_holder(claim) != self.settings.identity:
                continue
            meta = claim.get("metadata") or {}
            name = (meta.get("annotations") or {}).get("expbuild.io/task-name")
            body = await self.api.get(tasks_path(meta.get("namespace"), name)) if name else None
            if body is None:
                continue
            try:
                task = ExecutionTask.model_validate(body)
            except ValidationError:
                continue  # left to consider(), which ends it once
            if task.status.phase.finished or task.metadata.uid in self.running:
                continue
            message = (f"the node agent {self.settings.identity} on {self.settings.node} restarted while the task "
                       f"was {task.status.phase.value}; it is not run again (it may have had side effects)")
            await self.report.finish(task, body, {"phase": Phase.ERROR.value, "reason": "AgentRestarted",
                                            "message": message, "node": self.settings.node,
                                            "completionTime": timestamp(now())}, warning=True)

    # --- tasks --------------------------------------------------------------------------------------------

    def _task_scopes(self) -> list[str | None]:
        """The namespaces the agent lists and watches tasks in; None: cluster-wide."""
        return list(self.settings.task_namespaces) or [None]

    def _labels(self) -> dict[str, str]:
        return {NODE_LABEL: label_value(self.settings.node)}

    async def poll(self) -> None:
        for namespace in self._task_scopes():
            await self._list(namespace)

    async def _list(self, namespace: str | None) -> str:
        """Consider every task placed on this node in ``namespace``; the listing's resourceVersion."""
        bodies, version = await self.api.listing(tasks_path(namespace), self._labels())
        for body in bodies:
            self.consider(body)
        return version

    def consider(self, body: dict[str, Any]) -> None:
        """Start a placed task (if a slot is free), or stop a run the operator ended; else nothing. Never raises."""
        try:
            task = ExecutionTask.model_validate(body)
        except ValidationError as exc:  # the CRD's schema refuses these; an old CRD or a bug may not
            self._invalid(body, exc)
            return
        uid = task.metadata.uid
        run = self.running.get(uid)
        if run is not None:
            if (task.spec.cancel or task.status.phase.finished) and uid not in self.report.reported:
                run.cancel()  # ended by the operator (Cancelled, AgentLost): stop the processes
            return
        if task.status.phase is not Phase.SCHEDULED or task.spec.cancel or task.status.node != self.settings.node:
            return  # (the node label is what agents list by, and tenants can set labels; status.node they cannot)
        if not self.free_slots:
            self._starved = True
            return
        self.running[uid] = asyncio.create_task(self._claim_and_run(task, body), name=f"task-{task.key}")
        self.running[uid].add_done_callback(lambda _, uid=uid: self._done(uid))

    def deleted(self, body: dict[str, Any]) -> None:
        """A task is gone (no finalizer kept it, or the operator is down): its processes must not go on."""
        uid = str((body.get("metadata") or {}).get("uid") or "")
        run = self.running.get(uid)
        if run is not None and uid not in self.report.reported:
            LOG.info("%s/%s was deleted: stopping its run", (body.get("metadata") or {}).get("namespace"),
                     (body.get("metadata") or {}).get("name"))
            run.cancel()

    def _invalid(self, body: dict[str, Any], exc: ValidationError) -> None:
        """A task placed here that is not a valid ExecutionTask: end it in Error once; never retry it."""
        meta, status = body.get("metadata") or {}, body.get("status") or {}
        uid = str(meta.get("uid") or "")
        if (status.get("phase"), status.get("node")) != (Phase.SCHEDULED.value, self.settings.node) \
                or uid in self.running or not meta.get("namespace") or not meta.get("name"):
            return
        message = f"the task is not a valid ExecutionTask: {describe_task_error(exc)}"[:1024]
        self.running[uid] = asyncio.create_task(self.report.end_invalid(body, message), name=f"invalid-{uid}")
        self.running[uid].add_done_callback(lambda _, uid=uid: self._done(uid))

    def _done(self, uid: str) -> None:
        self.running.pop(uid, None)
        self.report.reported.discard(uid)
        if self._starved:  # a task is waiting for this slot: do not leave it to the next resync
            self._starved = False
            self._resync_now.set()

    async def _claim_and_run(self, task: ExecutionTask, body: dict[str, Any]) -> None:
        try:
            await self.api.create(leases_path(task.metadata.namespace),
                                  render_claim(task, self.settings.identity, self.settings.node, now()))
        except ApiError as exc:
            if exc.status == 409:
                LOG.info("%s is claimed by another agent", task.key)
                return
            raise
        refused = refusal(task, node=self.settings.node, advertised=self.healthy, policy=self.settings.policy,
                          capacity=self.capacity)
        verdict = await tenancy.judgement(self.api, task) if refused is None else None
        refused = refused or tenancy.refusal(verdict)  # type: ignore[arg-type]
        if refused is not None:
            await self._refuse(task, body, refused)
            return
        assert isinstance(verdict, Judgement)
        try:
            await self._run(task, body, verdict)
        except asyncio.CancelledError:
            raise  # a cancelled task (operator wrote Cancelled) or a stopping agent (recover() ends it next start)
        except Exception as exc:
            LOG.exception("running %s failed", task.key)
            await self.report.finish(task, body, {"phase": Phase.ERROR.value, "reason": "AgentFailed",
                                            "message": f"the node agent failed to run the task: {exc}",
                                            "node": self.settings.node, "completionTime": timestamp(now())},
                               warning=True)

    async def _run(self, task: ExecutionTask, body: dict[str, Any], verdict: Judgement) -> None:
        started: list[asyncio.Task[None]] = []

        def on_selected(executor: TaskExecutor) -> None:
            level = executor.isolation_level().value
            patch = {"phase": Phase.RUNNING.value, "reason": "Started", "executor": executor.name,
                     "message": verdict.raised(task.spec.isolation.minimum),
                     "isolationLevel": level, "node": self.settings.node, "startTime": timestamp(now()),
                     "observedGeneration": task.metadata.generation,
                     "conditions": task_conditions(task, [("Scheduled", "True", "", ""), ("Started", "True", "", "")],
                                                   now())}
            started.append(asyncio.create_task(self.report.started(task, body, patch, verdict.policies)))

        try:
            config_maps = await self._fetch_config_maps(task)
        except ConfigMapError as exc:
            await self._refuse(task, body, Refusal("InvalidTask", f"spec.inputs: {exc}"))
            return
        chain = [self._executors[name] for name in runnable({name: self._executors[name].isolation_level()
                                                             for name in self.healthy}, task)]
        lowest = max(floor(task, self.settings.policy), verdict.floor.value if verdict.floor else IsolationLevel.NONE)
        status = await run_task(task, chain, self.config, config_maps=config_maps.__getitem__,
                                floor=lowest, on_selected=on_selected, node=self.settings.node)
        if started:
            await started[0]
        patch = status.model_dump(by_alias=True, mode="json", exclude_none=True, exclude={"conditions"})
        patch["observedGeneration"] = task.metadata.generation
        await self.report.finish(task, body, patch, warning=status.phase is not Phase.SUCCEEDED)

    async def _fetch_config_maps(self, task: ExecutionTask) -> dict[str, dict[str, Any]]:
        """The task's ConfigMap inputs, from the task's own namespace only; nothing is written to disk."""
        found: dict[str, dict[str, Any]] = {}
        namespace = task.metadata.namespace
        for name in {item.config_map.name for item in task.spec.inputs if item.config_map is not None}:
            try:
                config_map = await self.api.get(config_map_path(namespace, name))
            except ValueError as exc:  # not an object name: the CRD and the models refuse these already
                raise ConfigMapError(f"configMap {exc}") from None
            if config_map is None:
                raise ConfigMapError(f"ConfigMap {namespace}/{name} does not exist")
            found[name] = config_map
        return found

    async def _refuse(self, task: ExecutionTask, body: dict[str, Any], refused: Refusal) -> None:
        LOG.warning("refusing %s: %s", task.key, refused.message)
        await self.report.finish(task, body, {"phase": Phase.ERROR.value, "reason": refused.reason,
                                        "message": refused.message, "node": self.settings.node,
                                        "completionTime": timestamp(now())}, warning=True)
