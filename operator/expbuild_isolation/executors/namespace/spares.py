"""The namespace executor's spare sandboxes: the zygote that forks them and the pool that keeps them warm.

A process-wide pool keeps ``SPARES_PER_SHAPE`` spare sandboxes (each in a fresh cgroup, namespaces
made, root built and pivoted, nothing of a task yet) per shape; a task takes one, writes its limits,
hands over its spec and pipes, and a daemon thread makes the replacement after the task ends. A task
whose shape has no spare gets one made on the spot. Spare cgroups are named ``spare-N.<worker pid>``
until taken, then renamed after the task. ``EXPBUILD_NAMESPACE_SPARES=0`` turns the pool off.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import cgroups, linux
from . import nsinit
from .launch import DEFAULT_PATH, LaunchSpec, Prepared

SPARES_PER_SHAPE = int(os.environ.get("EXPBUILD_NAMESPACE_SPARES", "2"))   # 0: every task waits for its own
SPARE_MAX_AGE = 60.0
_sequence = itertools.count()


def unique_suffix() -> str:
    """``-N``, unique in this worker: spares and tasks share the counter, so their cgroup names never clash."""
    return f"-{next(_sequence)}"


@dataclass(frozen=True)
class Shape:
    """What a spare is built for; a task whose shape differs gets a spare made on the spot."""

    parent: str
    namespaces: tuple[str, ...]
    rootfs: str
    shm_size_bytes: int
    host_network: bool
    pivot_early: bool


@dataclass
class Spare:
    """A launcher in a cgroup of its own, waiting on ``sock`` for one task."""

    slot: int
    sock: socket.socket
    group: cgroups.TaskCgroup
    made: float
    pooled: bool = False

    def launch(self, spec: LaunchSpec, fds: list[int]) -> bool:
        """Hand the task over; False if the spare is gone (the caller makes another in the same cgroup)."""
        try:
            socket.send_fds(self.sock, [spec.to_bytes()], fds)
            return True
        except OSError:
            return False
        finally:
            self.sock.close()

    def discard(self) -> None:
        self.sock.close()   # the spare sees EOF and exits


def make_spare(shape: Shape) -> Spare:
    """A fresh cgroup (no limits yet) and a spare launcher inside it."""
    group = cgroups.TaskCgroup.create("spare", parent=shape.parent, unique=unique_suffix())
    try:
        return spare_in(group, shape)
    except BaseException:
        remove_quietly(group)
        raise


def spare_in(group: cgroups.TaskCgroup, shape: Shape) -> Spare:
    """A spare launcher in ``group`` (which may already have its task's limits)."""
    prepared = Prepared(cgroup_procs=[str(p) for p in group.procs_files], namespaces=list(shape.namespaces),
                        rootfs=shape.rootfs, shm_size_bytes=shape.shm_size_bytes,
                        host_network=shape.host_network, pivot_early=shape.pivot_early)
    slot, sock = Zygote.prepare(prepared)
    return Spare(slot, sock, group, time.monotonic())


def remove_quietly(group: cgroups.TaskCgroup) -> None:
    """Remove a cgroup if it can be; what is left is the sweep's."""
    with contextlib.suppress(cgroups.CgroupError, OSError):
        group.remove()


def open_tree_works() -> bool:
    """Whether this kernel has open_tree(2)/move_mount(2) (5.2+): then spares pivot before their task."""
    if not _OPEN_TREE:
        fd = linux.open_tree("/")
        if fd is not None:
            os.close(fd)
        _OPEN_TREE.append(fd is not None)
    return _OPEN_TREE[0]


_OPEN_TREE: list[bool] = []


class SparePool:
    """Process-wide spares: per shape, launchers that have unshared their namespaces, joined a fresh
    cgroup and built and pivoted into the task-independent part of the root, waiting for a task. Taking one removes the
    cgroup join (an RCU grace period on cgroup v1), the forks, unshare and ~30 mounts from a task's
    start; one daemon thread refills. A spare older than ``SPARE_MAX_AGE`` is replaced (its binds of the
    host's /etc files would be stale)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spares: dict[Shape, list[Spare]] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._filling = threading.Lock()   # one filler at a time (warmup and the thread), or both overshoot

    def take(self, shape: Shape) -> Spare | None:
        while True:
            with self._lock:
                spares = self._spares.setdefault(shape, [])
                spare = spares.pop(0) if spares else None
            if spare is None:
                return None
            if time.monotonic() - spare.made < SPARE_MAX_AGE:
                return spare
            self.drop(spare)

    def want(self, shape: Shape) -> None:
        with self._lock:
            self._spares.setdefault(shape, [])
        self._kick()

    def fill(self, shape: Shape) -> None:
        """Make spares for ``shape`` until there are SPARES_PER_SHAPE (in the calling thread)."""
        with self._lock:
            self._spares.setdefault(shape, [])
        with self._filling:
            while True:
                with self._lock:
                    if len(self._spares[shape]) >= SPARES_PER_SHAPE:
                        return
                spare = make_spare(shape)
                with self._lock:
                    self._spares[shape].append(spare)

    @staticmethod
    def drop(spare: Spare) -> None:
        spare.discard()
        remove_quietly(spare.group)

    def _kick(self) -> None:
        if SPARES_PER_SHAPE <= 0:
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="namespace-spares", daemon=True)
            self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(timeout=SPARE_MAX_AGE / 2)
            self._wake.clear()
            with self._lock:
                shapes = list(self._spares)
                stale = []
                for spares in self._spares.values():
                    keep = [s for s in spares if time.monotonic() - s.made < SPARE_MAX_AGE]
                    stale += [s for s in spares if s not in keep]
                    spares[:] = keep
            for spare in stale:
                self.drop(spare)
            for shape in shapes:
                try:
                    self.fill(shape)
                except (cgroups.CgroupError, OSError):
                    continue   # tried again on the next task or in SPARE_MAX_AGE / 2


POOL = SparePool()


class Zygote:
    """The process-wide launcher (``nsinit``); restarted if it dies. It only forks spares: a task goes
    straight from the executor to its spare's socket, so the spares made by a zygote that died still work."""

    _lock = threading.Lock()
    _process: subprocess.Popen | None = None
    _socket: socket.socket | None = None
    _slots = itertools.count()

    @classmethod
    def ensure(cls) -> None:
        with cls._lock:
            if not cls._alive():
                cls._start()

    @classmethod
    def prepare(cls, prepared: Prepared) -> tuple[int, socket.socket]:
        """Fork a spare that joins ``prepared.cgroup_procs`` (sent open: the cgroup may be renamed before
        the spare gets to it); returns its slot number (for traces) and the socket its task goes to."""
        fds: list[int] = []
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            fds.append(theirs.detach())
            for procs in prepared.cgroup_procs:
                try:
                    fds.append(os.open(procs, os.O_WRONLY | os.O_CLOEXEC))
                except OSError as exc:
                    raise cgroups.CgroupError(f"cannot open {procs}: {exc.strerror}") from None
            with cls._lock:
                for attempt in range(2):
                    if not cls._alive():
                        cls._start()
                    slot = next(cls._slots)
                    try:
                        assert cls._socket is not None
                        socket.send_fds(cls._socket, [json.dumps({"op": "prepare", "slot": slot,
                                                                  "prepared": asdict(prepared)}).encode()], fds)
                        return slot, ours
                    except OSError:
                        if attempt:
                            raise
                        cls._stop()
        except BaseException:
            ours.close()
            raise
        finally:
            for fd in fds:
                os.close(fd)
        raise AssertionError("unreachable")

    @classmethod
    def _alive(cls) -> bool:
        return cls._process is not None and cls._process.poll() is None

    @classmethod
    def _stop(cls) -> None:
        if cls._process is not None and cls._process.poll() is None:
            cls._process.kill()
        if cls._socket is not None:
            cls._socket.close()
        cls._process = cls._socket = None

    @classmethod
    def _start(cls) -> None:
        cls._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        package_root = str(Path(__file__).resolve().parents[3])   # .../operator: holds expbuild_isolation
        env = {"PATH": DEFAULT_PATH, "PYTHONPATH": package_root, "PYTHONDONTWRITEBYTECODE": "1"}
        for name in ("EXPBUILD_NSINIT_TRACE", "EXPBUILD_NAMESPACE_SPARE_NICE"):
            if name in os.environ:
                env[name] = os.environ[name]
        nsinit.open_trace()
        cls._process = subprocess.Popen(
            [sys.executable, "-m", "expbuild_isolation.executors.namespace.nsinit", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL, cwd="/")
        theirs.close()
        cls._socket = ours
