"""Run tasks in containers through the Docker Engine API (seed sections 4.1 and 5.1).

One class holds one engine's whole lifecycle, in the order of its steps, which is why this module runs a
little past 400 lines: the pieces that stand alone already live beside it (``spec``, ``pool``, ``cgroup``,
``output``).

Lifecycle of one task: create (or take a warm container) -> attach to its
output (``output.py``: each stream's tail, read live) -> start -> wait
with the deadline -> on timeout kill (exit 124) -> exit state and OOM kills
(exit 137) -> stats from the task's parent cgroup -> outputs -> remove.
The container carries its own end too (``deadline.py``): it stops when this
worker dies, or at its deadline if the worker cannot act; a starting worker
sweeps what others left (``sweep.py``).
Removal happens on every path, cancellation included: the container has a
name before it exists, so a create still in flight when the task is cancelled
is awaited and then removed. Nothing relies on auto_remove, which races with
reading the state.

Blocking SDK calls run in threads (``asyncio.to_thread``); the long ``wait`` of
each task runs in this executor's own thread pool, so that many concurrent tasks
cannot starve the event loop's small default pool of the threads that start,
kill and remove containers. After the exit there is one thread hop, which reads
the parent cgroup and the outputs and collects the attached output; the exit
code comes from the wait, and the container is inspected only after a non-zero
exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import re
import socket
import stat
import time
import uuid
from dataclasses import replace
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from ..base import (ExecutionRequest, ExecutionResult, ExecutionStats, ExecutorCapabilities, ExecutorUnavailable,
                   IsolationLevel, IsolationUnavailable, ResourceLimits, TerminationReason)
from ..config import DockerConfig
from . import sweep as sweeping
from .busybox import ContainerInit
from .cgroup import ContainerCgroup, sweep_orphans
from .deadline import SCRIPTS, ended_at_own_deadline, start_failure, sweep_after
from .output import AttachedOutput
from .pool import WarmPool, sweep_slots
from .spec import (LABEL_DEADLINE, LABEL_OWNER, LABEL_TASK, LABEL_WORKER, Placement, capabilities_for, create_kwargs,
                   seccomp_option, working_dir_in_container)
from ..select import unmet_requirements
from ..workspace import WorkspaceError, collect_outputs, make_dirs_beneath

log = logging.getLogger(__name__)
_TRANSPORT_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)
_LONGEST_WAIT = 7 * 24 * 3600.0  # the API's own bound on spec.timeout
_REMOVE_RETRY_PAUSES = (0.1, 0.5)  # seconds before each further try of a refused removal
_OUTPUT_GRACE_SECONDS = 10.0  # how long after the exit the engine may take to close the attached output


class DockerExecutor:
    """Container isolation through a Docker-API daemon; gVisor (``runtime = "runsc"``) counts as VM level."""

    name = "docker"
    default_socket = "unix:///var/run/docker.sock"
    cgroup_top = "expbuild-docker"

    def __init__(self, config: DockerConfig | None = None) -> None:
        self.config = config or DockerConfig()
        self.worker_id = self.config.worker_id or socket.gethostname()
        self.owner = sweeping.owner_label()
        self._client: docker.DockerClient | None = None
        self._waits = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix=f"{self.name}-wait")
        self._runtimes_checked = False
        self._leftover_cgroups: list[ContainerCgroup] = []
        self.init = ContainerInit(self.name, SCRIPTS)
        self.pool = WarmPool(self) if self.config.pool_size > 0 else None

    # -- contract ---------------------------------------------------------------------------------------------

    def capabilities(self) -> ExecutorCapabilities:
        return capabilities_for(self.config)

    def isolation_level(self) -> IsolationLevel:
        return self.capabilities().isolation_level

    async def health_check(self) -> None:
        await asyncio.to_thread(self._check, self.config.image)

    async def warmup(self) -> None:
        """Sweep what dead or stuck workers left (first: whatever else fails), pull the image, fill the pool."""
        await asyncio.to_thread(self.sweep)
        await asyncio.to_thread(self._ensure_image, self.config.image)
        if self.pool is not None:
            await self.pool.fill()

    async def close(self) -> None:
        """Remove the warm pool and release the connection; running tasks clean up after themselves."""
        if self.pool is not None:
            await self.pool.drain()
        left = await asyncio.to_thread(self.remove_leftover_cgroups, wait_seconds=10)
        if left:
            log.warning("%s: cgroups still busy at close: %s", self.name, ", ".join(left))
        if self._client is not None:
            self._client.close()
            self._client = None
        self._waits.shutdown(wait=False)

    async def execute(self, request: ExecutionRequest) -> ExecutionResult:
        missing = unmet_requirements(self.capabilities(), request)
        if missing:
            raise IsolationUnavailable(f"{self.name}: " + "; ".join(missing))
        limits = request.limits.merged_over(self.config.default_limits.to_limits())
        try:
            await asyncio.to_thread(self.prepare_workspace, request)
        except WorkspaceError as exc:
            return self._start_failed(request, f"working directory: {exc}")
        if self.pool is not None:
            warm = await self.pool.take(request, limits)
            result = await warm.run(request) if warm is not None else None
            if result is not None:
                return result
        name = self.container_name()
        cgroup = ContainerCgroup(self.cgroup_top, name)
        labels = {**self.labels(request.task_id), LABEL_DEADLINE: str(sweep_after(request.timeout_seconds))}
        placement = Placement(name, labels, cgroup.cgroup_parent, str(request.workspace))
        created: asyncio.Future | None = None
        try:
            created = asyncio.ensure_future(asyncio.to_thread(self._create, request, limits, placement, cgroup))
            container = await asyncio.shield(created)
            return await self.run_container(container, request, cgroup, start=container.start)
        finally:
            await asyncio.shield(asyncio.ensure_future(self._cleanup(created, name, cgroup)))

    # -- the steps ----------------------------------------------------------------------------------------------

    def container_name(self) -> str:
        return f"xb-{uuid.uuid4().hex[:20]}"

    def labels(self, task_id: str) -> dict[str, str]:
        return {LABEL_TASK: task_id, LABEL_WORKER: self.worker_id, LABEL_OWNER: self.owner}

    def seccomp(self, profile: str) -> str:
        return seccomp_option(profile)

    def create_arguments(self, request: ExecutionRequest, limits: ResourceLimits, placement: Placement,
                         **extra) -> dict:  # type: ignore[no-untyped-def]
        return create_kwargs(request, limits, self.config, placement, seccomp=self.seccomp(request.seccomp_profile),
                             engine=self.name, **extra)

    def _create(self, request: ExecutionRequest, limits: ResourceLimits, placement: Placement,  # type: ignore[no-untyped-def]
                cgroup: ContainerCgroup):
        limits = replace(limits, memory_bytes=cgroup.limit_memory(limits.memory_bytes))
        kwargs = self.create_arguments(request, limits, placement, init_dir=self.init_dir(request.workspace.parent))
        try:
            return self.client().containers.create(**kwargs)
        except docker.errors.ImageNotFound:
            raise ExecutorUnavailable(self._missing_image_message(kwargs["image"])) from None
        except docker.errors.APIError as exc:
            if exc.status_code == 404 and "image" in str(exc.explanation).lower():
                raise ExecutorUnavailable(self._missing_image_message(kwargs["image"])) from None
            raise ExecutorUnavailable(f"{self.name}: cannot create a container: {exc.explanation}") from None
        except _TRANSPORT_ERRORS as exc:
            raise ExecutorUnavailable(f"{self.name}: the daemon at {self.base_url} failed: {exc}") from None

    async def run_container(self, container, request: ExecutionRequest, cgroup: ContainerCgroup,  # type: ignore[no-untyped-def]
                            *, start, running: bool = False) -> ExecutionResult:  # type: ignore[no-untyped-def]
        """Start (via ``start``), wait with the deadline, and read everything back; the caller removes.

        ``running``: the container already runs and waits for ``start`` (a warm container; ``start`` is a
        non-blocking write): the wait is issued first, so the daemon's answer does not queue behind it, and
        ``start`` runs on the loop without a thread hop.
        """
        try:
            output = await asyncio.to_thread(self._attach, container, request.log_limit_bytes)
        except docker.errors.APIError as exc:   # Podman prepares (runc create) a container to attach to it
            why = re.sub(r"^preparing container \w+ for attach: ", "", str(exc.explanation or exc))
            return self._start_failed(request, why)
        began = time.monotonic()
        try:
            status, timed_out = await self._start_and_wait(container, request, start, running)
        except _StartRefused as exc:
            output.close()
            return self._start_failed(request, str(exc))
        except BaseException:
            output.close()
            raise
        duration = time.monotonic() - began
        # One thread hop for everything after the exit (the attached output has ended or ends meanwhile).
        return await asyncio.to_thread(self._finish, container, request, cgroup, status, timed_out, duration, output)

    async def _start_and_wait(self, container, request: ExecutionRequest, start,  # type: ignore[no-untyped-def]
                              running: bool) -> tuple[dict, bool]:
        """(the engine's wait answer, whether the deadline killed it)."""
        loop = asyncio.get_running_loop()
        # The daemon's answer comes at the exit, or after the kill at the deadline; the socket's own timeout
        # only guards against a daemon that never answers (and must fit a time_t: 10**15 s does not).
        wait_call = functools.partial(container.wait, timeout=min(request.timeout_seconds, _LONGEST_WAIT) + 120)
        if running:
            waiting = loop.run_in_executor(self._waits, wait_call)
            try:
                start()
            except BaseException:
                waiting.cancel()  # the caller removes the container, which ends a wait already sent
                raise
        else:
            try:
                await asyncio.to_thread(start)
            except docker.errors.APIError as exc:
                raise _StartRefused(str(exc.explanation or exc)) from None
            waiting = loop.run_in_executor(self._waits, wait_call)
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), request.timeout_seconds), False
        except TimeoutError:
            with contextlib.suppress(docker.errors.APIError):
                await asyncio.to_thread(container.kill)
            return await waiting, True

    def _attach(self, container, limit: int) -> AttachedOutput:  # type: ignore[no-untyped-def]
        try:
            # stdin too where it is open (our init): the container learns of this worker's death through it
            stdin = bool((container.attrs.get("Config") or {}).get("OpenStdin"))
            return AttachedOutput(self.client().api, container.id, limit, stdin=stdin)
        except docker.errors.APIError:
            raise
        except _TRANSPORT_ERRORS as exc:
            raise ExecutorUnavailable(f"{self.name}: cannot attach to container {container.name}: "
                                      f"{_short(exc)}") from None

    def _finish(self, container, request: ExecutionRequest, cgroup: ContainerCgroup, status: dict,  # type: ignore[no-untyped-def]
                timed_out: bool, duration: float, output: AttachedOutput) -> ExecutionResult:
        try:
            return self._settle(container, request, cgroup, status, timed_out, duration, output)
        finally:
            output.close()

    def _settle(self, container, request: ExecutionRequest, cgroup: ContainerCgroup, status: dict,  # type: ignore[no-untyped-def]
                timed_out: bool, duration: float, output: AttachedOutput) -> ExecutionResult:
        usage = cgroup.stats()
        code = status.get("StatusCode") if isinstance(status, dict) else None
        state: dict = {}
        if not isinstance(code, int) or code != 0:
            # A non-zero (or unknown) exit: the daemon's state says whether the OOM killer did it.
            with contextlib.suppress(docker.errors.NotFound):
                container.reload()
                state = container.attrs.get("State", {})
        exit_code = int(state.get("ExitCode", code if isinstance(code, int) else -1))
        stdout, stderr = output.finish(timeout=_OUTPUT_GRACE_SECONDS)
        # The container's own deadline came first (this worker was held up past the timeout and its grace).
        timed_out = timed_out or (exit_code != 0 and ended_at_own_deadline(stderr.data()))
        # Any process of the task killed at the memory limit, even one whose shell went on to exit 0.
        oom = bool(state.get("OOMKilled")) or (usage is not None and usage.oom_killed)
        not_started = None if timed_out or oom else start_failure(exit_code, stderr.data())
        if timed_out:
            exit_code, reason = 124, TerminationReason.DEADLINE_EXCEEDED
        elif oom:
            exit_code, reason = 137, TerminationReason.OOM_KILLED
        elif not_started:
            exit_code, reason = 127, TerminationReason.START_FAILED
        elif exit_code == 0:
            reason = TerminationReason.COMPLETED
        elif usage is not None and usage.pids_limit_hit:
            reason = TerminationReason.PIDS_LIMIT
        else:
            reason = TerminationReason.NON_ZERO_EXIT
        files, problems = collect_outputs(request.workspace, request.output_paths, limit=request.output_limit_bytes)
        stats = ExecutionStats(duration_seconds=duration,
                               cpu_time_seconds=usage.cpu_time_seconds if usage else None,
                               peak_memory_bytes=usage.peak_memory_bytes if usage else None,
                               disk_read_bytes=usage.disk_read_bytes if usage else None,
                               disk_write_bytes=usage.disk_write_bytes if usage else None)
        message = {TerminationReason.DEADLINE_EXCEEDED: f"killed after the {request.timeout_seconds:g}s timeout",
                   TerminationReason.OOM_KILLED: "killed by the kernel at the memory limit",
                   TerminationReason.START_FAILED: f"{request.argv[0]}: could not be started: {not_started}",
                   }.get(reason, "")
        return ExecutionResult(exit_code=exit_code, reason=reason, executor=self.name,
                               isolation_level=self.isolation_level(), stdout=stdout.data(), stderr=stderr.data(),
                               stdout_truncated=stdout.truncated, stderr_truncated=stderr.truncated,
                               output_files=tuple(files), output_problems=tuple(problems), stats=stats,
                               message=message, image_id=str(container.attrs.get("Image") or ""))

    def _start_failed(self, request: ExecutionRequest, why: str) -> ExecutionResult:
        return ExecutionResult(exit_code=127, reason=TerminationReason.START_FAILED, executor=self.name,
                               isolation_level=self.isolation_level(), stderr=why.encode()[:request.log_limit_bytes],
                               message=f"{request.argv[0] if request.argv else '(empty argv)'}: could not be "
                                       f"started: {why}")

    async def _cleanup(self, created: asyncio.Future | None, name: str, cgroup: ContainerCgroup) -> None:
        if created is not None:
            with contextlib.suppress(BaseException):
                await created  # a create still in flight finishes first, so that nothing appears after removal
        await asyncio.to_thread(self.remove, name, cgroup)

    def remove(self, name: str, cgroup: ContainerCgroup | None) -> None:
        """Remove the container (killing it if needed) and its parent cgroup; absent things are fine.

        A refusal is tried again: a container that ends itself while the removal kills it (its init, when a
        cancelled task's attached stdin closes) makes Podman refuse ("could not be stopped ... state
        improper"); stopped by then, it goes on the next try.
        """
        for pause in (*_REMOVE_RETRY_PAUSES, None):
            try:
                self.client().api.remove_container(name, force=True, v=True)
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError as exc:
                if "removal" in str(exc).lower() and "in progress" in str(exc).lower():
                    break
                if pause is None:
                    log.warning("%s: cannot remove container %s: %s", self.name, name, exc)
                else:
                    time.sleep(pause)
        if cgroup is not None:
            self._leftover_cgroups.append(cgroup)
        self.remove_leftover_cgroups()

    def remove_leftover_cgroups(self, *, wait_seconds: float = 0.0) -> list[str]:
        """Retry parent cgroups still busy (a conmon exiting); returns what remains."""
        remaining = []
        for cgroup in list(self._leftover_cgroups):
            try:
                cgroup.remove(wait_seconds=wait_seconds)
            except Exception:  # noqa: BLE001 - retried on the next removal and at close(); never masks a result
                remaining.append(cgroup)
        self._leftover_cgroups = remaining
        return [c.relative for c in remaining]

    def prepare_workspace(self, request: ExecutionRequest) -> None:
        """Make the workspace (and the working dir) writable by the task's user, before the bind mount."""
        make_dirs_beneath(request.workspace, working_dir_in_container(request).removeprefix("/workspace").lstrip("/"))
        uid = self.host_uid(request.run_as_user)
        if uid is None:
            return
        os.lchown(request.workspace, uid, uid)
        for root, dirs, files in os.walk(request.workspace):
            for entry in (*dirs, *files):
                os.lchown(os.path.join(root, entry), uid, uid)

    def host_uid(self, uid: int | None) -> int | None:
        """The host uid that the task's uid writes as (differs under a user namespace)."""
        return uid

    # -- the daemon ---------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        from_env = os.environ.get("DOCKER_HOST") if self.name == "docker" else None
        path = self.config.socket_path or from_env or self.default_socket
        return f"unix://{path}" if path.startswith("/") else path

    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._check_socket()
            try:
                self._client = docker.DockerClient(base_url=self.base_url, timeout=60, max_pool_size=64)
            except _TRANSPORT_ERRORS as exc:
                raise ExecutorUnavailable(f"{self.name}: the daemon at {self.base_url} does not answer "
                                          f"({_short(exc)}); is it running?") from None
        return self._client

    def _check_socket(self) -> None:
        if not self.base_url.startswith("unix://"):
            return
        path = self.base_url.removeprefix("unix://")
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise ExecutorUnavailable(f"{self.name}: no socket at {path}: the daemon is not running, or "
                                      f"executor.{self.name}.socket_path names the wrong file") from None
        except PermissionError:
            raise ExecutorUnavailable(f"{self.name}: no permission to reach {path}") from None
        if not stat.S_ISSOCK(mode):
            raise ExecutorUnavailable(f"{self.name}: {path} is not a socket; "
                                      f"executor.{self.name}.socket_path names the wrong file")

    def _check(self, image: str) -> None:
        self._check_socket()
        try:
            client = self.client()
            client.ping()
        except ExecutorUnavailable:
            raise
        except _TRANSPORT_ERRORS as exc:
            self._client = None
            raise ExecutorUnavailable(f"{self.name}: the daemon at {self.base_url} does not answer "
                                      f"({_short(exc)}); is it running?") from None
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            raise ExecutorUnavailable(self._missing_image_message(image)) from None
        except _TRANSPORT_ERRORS as exc:
            raise ExecutorUnavailable(f"{self.name}: cannot inspect image {image!r}: {_short(exc)}") from None
        if self.config.runtime and not self._runtimes_checked:
            runtimes = client.info().get("Runtimes") or {}
            if self.config.runtime not in runtimes:
                raise ExecutorUnavailable(f"{self.name}: runtime {self.config.runtime!r} is not registered with "
                                          f"the daemon (known: {', '.join(sorted(runtimes)) or 'none'})")
            self._runtimes_checked = True

    def _missing_image_message(self, image: str) -> str:
        return (f"{self.name}: image {image!r} is not present at {self.base_url}; build it locally "
                f"(bash .ci/setup-containers.sh) or set executor.{self.name}.always_pull with a reachable registry")

    def _ensure_image(self, image: str) -> None:
        """Pull only when asked to (always_pull) or when the image is missing; a local image needs no registry."""
        self._check_socket()
        client = self.client()
        present = True
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            present = False
        if present and not self.config.always_pull:
            return
        try:
            client.images.pull(image)
        except _TRANSPORT_ERRORS as exc:
            if not present:
                raise ExecutorUnavailable(self._missing_image_message(image) + f" (pull failed: {_short(exc)})") from None
            log.warning("%s: always_pull: cannot pull %s, using the local copy: %s", self.name, image, _short(exc))

    def sweep(self) -> list[str]:
        """Remove what no live executor will (``sweep.py``) and the parent cgroups and pool slots left."""
        removed, others = sweeping.sweep(self.client().api, worker_id=self.worker_id, owner=self.owner,
                                         remove=lambda name: self.remove(name, ContainerCgroup(self.cgroup_top, name)))
        sweep_orphans(self.cgroup_top, others)
        sweep_slots(self.name)
        return removed

    def init_dir(self, parent: Path) -> str | None:
        """The host directory with the containers' init (``deadline.py``), copied into ``parent`` once; None:
        no own end for this container (``busybox.ContainerInit`` says why, once, in the log)."""
        return self.init.directory(parent)


class _StartRefused(Exception):
    """The engine refused to start the container (say, a missing executable); the message is its reason."""


def _short(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "No such file or directory", "Permission denied", "timed out"):
        if marker in text:
            return marker.lower()
    return text[:200]


__all__ = ["DockerExecutor"]
