"""The REAPI worker: a Remote Workers API bot serving a build server's queue through our executors.

``expbuild-isolation reapi-worker --server grpc://host:port`` registers one bot
session (a stable bot id, so a restarted worker re-registers and the server
requeues what the old session held at once), then long-polls UpdateBotSession:
the server holds the call until work arrives, we cancel it as soon as an action
finishes so its result is reported without waiting. Each lease runs through
``ActionRunner`` (judged against the config's ``[policy]`` and ``[task_limits]``,
inputs from the CAS, the local executor chain with the config's isolation
floor, outputs back). A lease that disappears from the
session was cancelled: its action is cancelled, which kills its whole cgroup.
On SIGTERM/SIGINT the bot stops taking work, cancels what runs, reports those
leases UNAVAILABLE (the server requeues them) and exits; a lost server is
retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...api.task import IsolationLevel
from ...executors.base import TaskExecutor
from ..chain import LOCAL_BACKENDS, build_chain
from ..config import WorkerConfig
from .cas import LocalCas, RemoteCas
from .protos import any_pb2, bots_grpc, bots_pb2, code_pb2, grpc, re_pb2, status_pb2, worker_pb2
from .runner import ActionRunner, RunnerSettings

LOG = logging.getLogger("expbuild.reapi")
_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
            ("grpc.keepalive_time_ms", 30000)]


@dataclass(frozen=True)
class ReapiSettings:
    server: str
    cas: str | None = None
    instance: str = ""
    bot_id: str = ""
    cache_dir: Path | None = None
    cache_bytes: int = 2 << 30
    poll_seconds: float = 30.0
    backoff_max_seconds: float = 30.0
    metrics_port: int | None = None


def grpc_target(url: str) -> str:
    """``grpc://host:port`` or ``host:port`` -> ``host:port`` (TLS endpoints are not supported yet)."""
    for scheme in ("grpc://", "http://"):
        if url.startswith(scheme):
            return url[len(scheme):].rstrip("/")
    if "://" in url:
        raise ValueError(f"server URL {url!r}: only grpc:// (plaintext) is supported")
    return url


def stable_bot_id(config: WorkerConfig) -> str:
    return f"{config.worker_id}@{socket.gethostname()}"


def executor_chains(config: WorkerConfig) -> dict[str, list[TaskExecutor]]:
    """The configured chain (``auto``) and one chain per backend an action may name, sharing one executor per
    backend: two instances of one backend would keep two warm pools and sweep each other's containers."""
    auto = build_chain(config)
    chains: dict[str, list[TaskExecutor]] = {"auto": auto}
    for name in LOCAL_BACKENDS:
        configured = [executor for executor in auto if executor.name == name]
        chains[name] = configured[:1] or build_chain(config, name)
    return chains


async def warm_up(executors: Sequence[TaskExecutor]) -> None:
    """Each configured executor's start, which first sweeps what a killed worker of this worker id left
    (containers past their deadline, or whose owner is gone). A backend down at start is logged, not fatal:
    actions that need it are answered UNAVAILABLE and the server retries them elsewhere."""
    for executor in executors:
        try:
            await executor.warmup()
        except Exception as exc:  # noqa: BLE001 - one broken backend must not keep the worker from serving
            LOG.warning("executor %s: warmup failed: %s", executor.name, exc)


class ReapiWorker:
    def __init__(self, config: WorkerConfig, settings: ReapiSettings) -> None:
        self.config, self.settings = config, settings
        self.bot_id = settings.bot_id or stable_bot_id(config)
        self.capacity = config.max_concurrent_tasks
        self._leases: dict[str, bots_pb2.Lease] = {}     # what the session holds, as we last reported it
        self._running: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._runner: ActionRunner | None = None
        self._session_name = ""
        self._version = ""

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until stop() (or a signal); reconnects with backoff while the server is away."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self.stop)
        floor = IsolationLevel(self.config.isolation_minimum)
        chains = executor_chains(self.config)
        await warm_up(chains["auto"])
        target = grpc_target(self.settings.server)
        cas_target = grpc_target(self.settings.cas) if self.settings.cas else target
        backoff = 0.5
        async with grpc.aio.insecure_channel(target, options=_OPTIONS) as channel, \
                _cas_channel(cas_target, target, channel) as cas_channel:
            remote = RemoteCas(cas_channel, self.settings.instance)
            cache = LocalCas(self.settings.cache_dir or self.config.work_dir / "cas", self.settings.cache_bytes,
                             remote)
            self._runner = ActionRunner(RunnerSettings(bot_id=self.bot_id, work_dir=self.config.work_dir / "actions",
                                                       floor=floor, max_output_bytes=self.config.max_output_bytes,
                                                       config=self.config),
                                        cache, remote, chains)
            bots = bots_grpc.BotsStub(channel)
            while not self._stopping:
                try:
                    await self._serve(bots)
                    backoff = 0.5
                except grpc.aio.AioRpcError as exc:
                    if self._stopping:
                        break
                    LOG.warning("bot session lost (%s: %s); reconnecting in %.1fs", exc.code().name,
                                exc.details(), backoff)
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, self.settings.backoff_max_seconds)
            await self._shutdown(bots)

    def stop(self) -> None:
        """Stop taking work; running actions are cancelled and handed back to the server."""
        self._stopping = True
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    # -- the session ----------------------------------------------------------------------------------------

    def _session(self, name: str = "", status: int = bots_pb2.OK) -> bots_pb2.BotSession:
        device = worker_pb2.Device(handle=self.bot_id, properties=[
            worker_pb2.Device.Property(key="OSFamily", value=self.config.platform.os),
            worker_pb2.Device.Property(key="ISA", value=self.config.platform.arch.replace("_", "-"))])
        worker = worker_pb2.Worker(devices=[device], configs=[
            worker_pb2.Worker.Config(key="capacity", value=str(self.capacity))])
        return bots_pb2.BotSession(name=name, bot_id=self.bot_id, status=status, worker=worker,
                                   leases=list(self._leases.values()))

    async def _serve(self, bots: bots_grpc.BotsStub) -> None:
        self._drop_all("the bot session is being re-created")
        # CreateBotSession long-polls for work like UpdateBotSession does: its answer may already hold leases
        session = await bots.CreateBotSession(bots_pb2.CreateBotSessionRequest(
            parent=self.settings.instance, bot_session=self._session()), timeout=min(self.settings.poll_seconds, 10))
        LOG.info("bot %s registered as session %s (capacity %d)", self.bot_id, session.name, self.capacity)
        self._session_name, self._version = session.name, session.version
        self._sync(session)
        while not self._stopping:
            request = bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=self._session(session.name))
            request.bot_session.version = self._version
            self._wake.clear()
            call = bots.UpdateBotSession(request, timeout=self.settings.poll_seconds)
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                done, _ = await asyncio.wait({asyncio.ensure_future(_result(call)), waker},
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                waker.cancel()
            if waker in done:           # an action finished (or we stop): report now, not after the long poll
                call.cancel()
                continue
            try:
                session = await call
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                    continue            # the long poll ended without work
                raise
            self._version = session.version
            self._sync(session)

    def _sync(self, session: bots_pb2.BotSession) -> None:
        """Start new leases, forget acknowledged completions, cancel leases the server took back."""
        offered = {lease.id: lease for lease in session.leases}
        for lease_id in list(self._leases):
            if lease_id in offered:
                continue
            if self._leases[lease_id].state == bots_pb2.LeaseState.COMPLETED:
                del self._leases[lease_id]      # the server has the result
            else:
                LOG.info("lease %s was cancelled by the server", lease_id)
                self._leases.pop(lease_id)
                task = self._running.pop(lease_id, None)
                if task is not None:
                    task.cancel()
        for lease_id, lease in offered.items():
            if lease_id in self._leases or lease.state not in (bots_pb2.LeaseState.PENDING,
                                                               bots_pb2.LeaseState.ACTIVE):
                continue
            active = bots_pb2.Lease()
            active.CopyFrom(lease)
            active.state = bots_pb2.LeaseState.ACTIVE
            self._leases[lease_id] = active
            self._running[lease_id] = asyncio.create_task(self._work(active))

    async def _work(self, lease: bots_pb2.Lease) -> None:
        assert self._runner is not None
        action = re_pb2.Action()
        if lease.payload.Is(re_pb2.Action.DESCRIPTOR):
            lease.payload.Unpack(action)
            status, result = await self._runner.run(lease.id, action)
        else:
            status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT,
                                       message=f"lease payload {lease.payload.type_url} is not an Action")
            result = re_pb2.ActionResult()
        self._complete(lease.id, status, result)

    def _complete(self, lease_id: str, status: status_pb2.Status, result: re_pb2.ActionResult) -> None:
        self._running.pop(lease_id, None)
        lease = self._leases.get(lease_id)
        if lease is None:
            return                              # cancelled meanwhile
        lease.state = bots_pb2.LeaseState.COMPLETED
        lease.status.CopyFrom(status)
        packed = any_pb2.Any()
        packed.Pack(result)
        lease.result.CopyFrom(packed)
        lease.ClearField("payload")
        self._wake.set()

    def _drop_all(self, why: str) -> None:
        for lease_id, task in list(self._running.items()):
            LOG.info("cancelling lease %s: %s", lease_id, why)
            task.cancel()
        self._running.clear()
        self._leases.clear()

    async def _shutdown(self, bots: bots_grpc.BotsStub) -> None:
        """Cancel running actions (their cgroups die with them) and hand their leases back for a retry."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lease_id in list(self._running):
            self._complete(lease_id, status_pb2.Status(code=code_pb2.UNAVAILABLE, message="worker shutting down"),
                           re_pb2.ActionResult())
        for lease in self._leases.values():
            if lease.state != bots_pb2.LeaseState.COMPLETED:
                lease.state = bots_pb2.LeaseState.COMPLETED
                lease.status.CopyFrom(status_pb2.Status(code=code_pb2.UNAVAILABLE, message="worker shutting down"))
                lease.ClearField("payload")
        if self._session_name:
            request = bots_pb2.UpdateBotSessionRequest(
                name=self._session_name, bot_session=self._session(self._session_name, bots_pb2.BOT_TERMINATING))
            request.bot_session.version = self._version
            try:
                await bots.UpdateBotSession(request, timeout=5)
            except grpc.aio.AioRpcError as exc:
                LOG.warning("could not hand leases back on shutdown (%s); the server requeues them when the "
                            "session expires", exc.code().name)
        LOG.info("bot %s stopped", self.bot_id)


async def _result(call):  # type: ignore[no-untyped-def]
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        await call


@contextlib.asynccontextmanager
async def _cas_channel(cas_target: str, target: str, channel: grpc.aio.Channel):  # type: ignore[no-untyped-def]
    if cas_target == target:
        yield channel
        return
    async with grpc.aio.insecure_channel(cas_target, options=_OPTIONS) as other:
        yield other


def run_reapi_worker(config: WorkerConfig, settings: ReapiSettings) -> None:
    """Blocking entry point for the CLI."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if settings.metrics_port:
        from ...metrics import start_metrics_server
        start_metrics_server(settings.metrics_port)
    LOG.info("expbuild REAPI worker on %s (%s), floor %s", settings.server, platform.node(),
             config.isolation_minimum)
    asyncio.run(ReapiWorker(config, settings).run())
