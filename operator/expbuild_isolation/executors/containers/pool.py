"""Warm containers (seed 7.2): start latency without starting a container.

A warm container is created *and started* ahead of time with every setting of
its limits class (image, limits, network, seccomp, user) and waits in
``read x < /.expbuild/go``, run by our init's busybox (``deadline.py``) where there is one, else by the
image's /bin/sh. Its /workspace is an empty per-slot host directory,
bind-mounted with ``rslave`` propagation from a shared mount point. When a task
arrives the executor, on the host, bind-mounts the task's workspace over that
slot directory (the mount propagates into the waiting container), writes the
task's argv and env as a shell script into the slot's read-only control
directory, and writes one line into the FIFO: the container's shell changes to
the working directory and sources our init, which runs the task as PID 1's child with its own deadline, as
in a cold container (without a static busybox: ``exec``s the task). From there on it is an ordinary
container run: wait with the deadline, logs, state, stats, outputs, removal.

While it waits, the pool holds the FIFO open for writing: if the worker dies the kernel closes it, the
waiting shell reads end of file and exits, and its container stops (a restarted worker's sweep removes it).

A used container is never reused: it is removed after its one task, off the task's
critical path, and the pool tops itself up in the background -- after the task
when other warm containers of its class still wait (so making a container does
not compete with the task for the daemon), at once when the class ran dry. Needs root on the host (mount(2)); with
rootless engines the pool stays empty and every task starts cold.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import re
import shlex
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import docker.errors

from ..base import ExecutionRequest, ExecutionResult, ResourceLimits, TerminationReason
from ..config import DockerConfig
from .cgroup import ContainerCgroup
from .deadline import BUSYBOX, sourced_init
from .spec import LABEL_POOL, Placement, limits_class, working_dir_in_container


log = logging.getLogger(__name__)
POOL_ROOT = Path("/run/expbuild")
CONTROL = "/.expbuild"
WAIT = f"read x < {CONTROL}/go && . {CONTROL}/run.sh"
WAIT_COMMAND = ["/bin/sh", "-c", WAIT]           # without our init: the image's shell
INIT_WAIT_COMMAND = [BUSYBOX, "sh", "-c", WAIT]  # with it: our busybox is PID 1 from the start
MAX_CLASSES = 4
_MS_BIND, _MS_REC, _MS_SHARED, _MNT_DETACH = 4096, 16384, 1 << 20, 2
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, flags: int) -> None:
    if _libc.mount(source.encode(), target.encode(), None, flags, None) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mount {source} on {target}: {os.strerror(code)}")


def _umount(target: str) -> None:
    if _libc.umount2(target.encode(), _MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        code = ctypes.get_errno()
        raise OSError(code, f"umount {target}: {os.strerror(code)}")


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as handle:
        points = [line.split()[4] for line in handle]
    return sorted({p for p in points if p.startswith(prefix)}, key=len, reverse=True)


def launch_script(request: ExecutionRequest, init: bool = False) -> str:
    """The shell the waiting container sources: cd, then our init (``init``) or exec the task with its env."""
    if init:
        return sourced_init(working_dir_in_container(request), request.timeout_seconds, request.argv, request.env)
    env = [shlex.quote(f"{key}={value}") for key, value in request.env.items()]
    argv = [shlex.quote(arg) for arg in request.argv]
    return (f"cd {shlex.quote(working_dir_in_container(request))} || exit 127\n"
            f"exec env -- {' '.join(env)} {' '.join(argv)}\n")


@dataclass
class Slot:
    name: str
    directory: Path
    cgroup: ContainerCgroup
    container: object = None
    init: bool = False     # its PID 1 is our init's busybox
    keepalive: int | None = None   # the FIFO's write end, held while the container waits (see the docstring)

    @property
    def workspace(self) -> Path:
        return self.directory / "ws"

    @property
    def fifo(self) -> Path:
        return self.directory / "ctl" / "go"


class Engine(Protocol):
    """What the pool needs of its executor (Docker or Podman), and nothing more: the pool never imports it."""

    name: str
    config: DockerConfig
    cgroup_top: str

    def container_name(self) -> str: ...

    def labels(self, task_id: str) -> dict[str, str]: ...

    def create_arguments(self, request: ExecutionRequest, limits: ResourceLimits, placement: Placement,
                         **extra: Any) -> dict: ...

    def client(self) -> Any: ...

    def remove(self, name: str, cgroup: ContainerCgroup | None) -> None: ...

    def init_dir(self, parent: Path) -> str | None: ...

    def run_container(self, container: Any, request: ExecutionRequest, cgroup: ContainerCgroup, *,
                      start: Callable[[], Any], running: bool = False) -> Awaitable[ExecutionResult]: ...


class WarmPool:
    def __init__(self, executor: Engine) -> None:
        self.executor = executor
        self.size = executor.config.pool_size
        self.root = POOL_ROOT / f"{executor.name}-pool-{os.getpid()}"
        self.enabled = os.geteuid() == 0
        self._ready: dict[tuple, list[Slot]] = {}
        self._templates: OrderedDict[tuple, tuple[ExecutionRequest, ResourceLimits]] = OrderedDict()
        self._fillers: dict[tuple, asyncio.Task] = {}
        self.closed = False
        self._releasing: set[asyncio.Future] = set()
        self.created = 0        # containers ever made for the pool
        self.used: list[str] = []  # names of the warm containers that ran a task (each must appear once)

    def owns(self, name: str) -> bool:
        return any(slot.name == name for slots in self._ready.values() for slot in slots)

    def ready_count(self) -> int:
        return sum(len(slots) for slots in self._ready.values())

    async def fill(self, request: ExecutionRequest | None = None) -> None:
        """Top up the worker's default class (or ``request``'s class) and wait until it is full."""
        if not self.enabled:
            return
        if request is None:
            request = ExecutionRequest(task_id="warm", argv=("true",), workspace=Path("/"))
        limits = request.limits.merged_over(self.executor.config.default_limits.to_limits())
        key = self._remember(request, limits)
        self._refill(key)
        with contextlib.suppress(Exception):
            await asyncio.shield(self._fillers[key])

    async def take(self, request: ExecutionRequest, limits: ResourceLimits) -> WarmRun | None:
        """A started, waiting container of the request's class, or None (the caller starts one cold)."""
        if not self.enabled or self.closed:
            return None
        key = self._remember(request, limits)
        slots = self._ready.get(key) or []
        slot = slots.pop(0) if slots else None
        if slot is None or not slots:
            self._refill(key)  # nothing left for the next task: make containers now
            return WarmRun(self, slot, None) if slot is not None else None
        # Others still wait: top up after this task, so that creating and starting a container does not
        # compete with it for the daemon.
        return WarmRun(self, slot, key)

    def release_later(self, slot: Slot) -> None:
        task = asyncio.ensure_future(asyncio.to_thread(self.release, slot))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def drain(self) -> None:
        self.closed = True
        await asyncio.gather(*list(self._releasing), return_exceptions=True)
        for task in self._fillers.values():
            task.cancel()
        await asyncio.gather(*self._fillers.values(), return_exceptions=True)
        self._fillers.clear()
        slots = [slot for slots in self._ready.values() for slot in slots]
        self._ready.clear()
        await asyncio.gather(*(asyncio.to_thread(self.release, slot) for slot in slots))
        with contextlib.suppress(OSError):
            self.root.rmdir()

    # -- internals ------------------------------------------------------------------------------------------------

    def _remember(self, request: ExecutionRequest, limits: ResourceLimits) -> tuple:
        key = limits_class(request, limits, self.executor.config)
        if key not in self._templates:
            template = replace(request, task_id="warm", argv=("true",), env={}, working_dir="", workspace=Path("/"))
            self._templates[key] = (template, limits)
            while len(self._templates) > MAX_CLASSES:
                old, _ = self._templates.popitem(last=False)
                for slot in self._ready.pop(old, []):
                    asyncio.get_running_loop().run_in_executor(None, self.release, slot)
        self._templates.move_to_end(key)
        return key

    def _refill(self, key: tuple) -> None:
        running = self._fillers.get(key)
        if running is None or running.done():
            self._fillers[key] = asyncio.ensure_future(self._fill_class(key))

    async def _fill_class(self, key: tuple) -> None:
        while not self.closed and key in self._templates and len(self._ready.get(key, [])) < self.size:
            template, limits = self._templates[key]
            missing = self.size - len(self._ready.get(key, []))
            making = [asyncio.ensure_future(asyncio.to_thread(self._make_slot, template, limits))
                      for _ in range(missing)]
            try:
                made = await asyncio.shield(asyncio.gather(*making, return_exceptions=True))
            except asyncio.CancelledError:
                for future in making:  # drained meanwhile: the containers being made go too
                    with contextlib.suppress(Exception):
                        await asyncio.to_thread(self.release, await future)
                raise
            failures = [slot for slot in made if isinstance(slot, BaseException)]
            for slot in made:
                if isinstance(slot, BaseException):
                    continue
                if key in self._templates and not self.closed:
                    self._ready.setdefault(key, []).append(slot)
                else:
                    await asyncio.to_thread(self.release, slot)
            if failures:  # a pool that cannot fill just means cold starts
                log.warning("%s: warm pool cannot add a container: %s", self.executor.name, failures[0])
                return

    def _make_slot(self, template: ExecutionRequest, limits: ResourceLimits) -> Slot:
        from docker.types import Mount

        name = self.executor.container_name()
        slot = Slot(name, self.root / name, ContainerCgroup(self.executor.cgroup_top, name))
        (slot.directory / "ctl").mkdir(parents=True, mode=0o755)
        slot.workspace.mkdir(mode=0o755)
        os.mkfifo(slot.fifo, 0o644)
        try:
            _mount(str(slot.workspace), str(slot.workspace), _MS_BIND)
            _mount("none", str(slot.workspace), _MS_SHARED)
            labels = {**self.executor.labels("warm"), LABEL_POOL: "1"}
            placement = Placement(name, labels, slot.cgroup.cgroup_parent, str(slot.workspace))
            limits = replace(limits, memory_bytes=slot.cgroup.limit_memory(limits.memory_bytes))
            init_dir = self.executor.init_dir(POOL_ROOT)
            slot.init = init_dir is not None
            kwargs = self.executor.create_arguments(
                template, limits, placement, command=INIT_WAIT_COMMAND if slot.init else WAIT_COMMAND,
                workspace_propagation="rslave", init_dir=init_dir,
                extra_mounts=(Mount(target=CONTROL, source=str(slot.directory / "ctl"), type="bind",
                                    read_only=True),))
            slot.container = self.executor.client().containers.create(**kwargs)
            self.created += 1
            slot.container.start()
            slot.keepalive = open_waiting_fifo(slot.fifo, slot.name, seconds=30)
        except BaseException:
            self.release(slot)
            raise
        return slot

    def release(self, slot: Slot) -> None:
        """Remove the container, its cgroup and the slot directory; never deletes through a mount."""
        self.executor.remove(slot.name, slot.cgroup)
        if slot.keepalive is not None:   # after the removal: a container stopping meanwhile races with it (Podman)
            os.close(slot.keepalive)
            slot.keepalive = None
        for point in _mounts_under(slot.directory):
            with contextlib.suppress(OSError):
                _umount(point)
        for _ in range(3):
            with contextlib.suppress(OSError):
                _umount(str(slot.workspace))
        if _mounts_under(slot.directory):
            log.warning("%s: %s is still mounted; left in place", self.executor.name, slot.directory)
            return
        for path in (slot.fifo, slot.directory / "ctl" / "run.sh"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for directory in (slot.directory / "ctl", slot.workspace, slot.directory):
            with contextlib.suppress(OSError):
                directory.rmdir()


class WarmRun:
    """One task in one warm container."""

    def __init__(self, pool: WarmPool, slot: Slot, refill_after: tuple | None = None) -> None:
        self.pool, self.slot = pool, slot
        self._refill_after = refill_after
        self._fifo_fd: int | None = None

    async def run(self, request: ExecutionRequest) -> ExecutionResult | None:
        try:
            return await self._run(request)
        finally:
            if self._refill_after is not None and not self.pool.closed:
                self.pool._refill(self._refill_after)

    async def _run(self, request: ExecutionRequest) -> ExecutionResult | None:
        executor = self.pool.executor
        try:
            await asyncio.to_thread(self._arm, request)
        except (OSError, docker.errors.APIError) as exc:
            log.warning("%s: warm container %s unusable, starting cold: %s", executor.name, self.slot.name, exc)
            if self._fifo_fd is not None:
                os.close(self._fifo_fd)
            await asyncio.shield(asyncio.ensure_future(asyncio.to_thread(self.pool.release, self.slot)))
            return None
        self.pool.used.append(self.slot.name)
        try:
            result = await executor.run_container(self.slot.container, request, self.slot.cgroup,
                                                  start=self._trigger, running=True)
        finally:
            if self._fifo_fd is not None:
                os.close(self._fifo_fd)
            # The task's workspace leaves the slot now; removing the spent container happens off the
            # task's critical path (close() waits for it).
            with contextlib.suppress(OSError):
                _umount(str(self.slot.workspace))
            self.pool.release_later(self.slot)
        if not self.slot.init and result.exit_code == 127 and re.search(rb"env: can't execute", result.stderr):
            result = replace(result, reason=TerminationReason.START_FAILED,
                             message=f"{request.argv[0]}: could not be started")
        return result

    def _arm(self, request: ExecutionRequest) -> None:
        """Open the FIFO (proves the container is waiting), mount the task's workspace, write the script."""
        self._fifo_fd = open_waiting_fifo(self.slot.fifo, self.slot.name, seconds=5)
        (self.slot.directory / "ctl" / "run.sh").write_text(launch_script(request, self.slot.init))
        _mount(str(request.workspace), str(self.slot.workspace), _MS_BIND | _MS_REC)

    def _trigger(self) -> None:
        assert self._fifo_fd is not None
        os.write(self._fifo_fd, b"go\n")
        os.close(self._fifo_fd)
        self._fifo_fd = None


def open_waiting_fifo(fifo: Path, name: str, *, seconds: float) -> int:
    """The FIFO's write end, once the container's shell waits at its read end (ENXIO until then)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise docker.errors.APIError(f"warm container {name} is not waiting") from None
            time.sleep(0.002)


def sweep_slots(engine: str) -> None:
    """Unmount and delete the pool directories of dead processes (after a crash)."""
    with contextlib.suppress(OSError):
        for directory in POOL_ROOT.glob(f"{engine}-pool-*"):
            pid = directory.name.rsplit("-", 1)[-1]
            if pid.isdigit() and (pid == str(os.getpid()) or Path(f"/proc/{pid}").exists()):
                continue
            for point in _mounts_under(directory):
                with contextlib.suppress(OSError):
                    _umount(point)
            if not _mounts_under(directory):
                for path in sorted(directory.glob("**/*"), key=lambda p: len(p.parts), reverse=True):
                    with contextlib.suppress(OSError):
                        path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
                with contextlib.suppress(OSError):
                    directory.rmdir()
