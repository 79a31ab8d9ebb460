"""The per-task parent cgroup of a container: where CPU time and peak memory survive the container.

Docker deletes a container's own cgroup when it exits, and its stats API answers
nothing afterwards. So every task container gets a private ``cgroup_parent``;
the kernel charges usage hierarchically, so the parent still holds the totals
(CPU time, peak memory, OOM kills) after the container is gone. We read them,
then delete the parent in every hierarchy (cgroup v1: one directory per
controller; v2: one unified directory).

The parents live under their own top directory (``expbuild-docker``,
``expbuild-podman``), apart from the namespace executor's ``expbuild``, whose
sweep would otherwise treat them as its own leftovers.

OOM kills: on cgroup v2 the parent's ``memory.events`` counts every kill below
it. On v1 a cgroup counts only its own processes' kills and the engine deletes
the container's cgroup at exit (Docker says OOMKilled from its own watch,
Podman never does). So on v1 the parent is made before the container, holds
the task's memory limit and an eventfd the kernel notifies when that limit
runs out; the engine gives the container one page more, so the parent's limit
is the one reached (the notification goes to the cgroup whose limit was hit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path

from ..cgroups import CGROUP_ROOT, CgroupError, CgroupStats, TaskCgroup, detect_version, v2_root

PAGE = os.sysconf("SC_PAGE_SIZE")


def _hierarchies(root: Path = CGROUP_ROOT) -> dict[str, Path]:
    """Controller name (v1) or "unified" -> mount point of every cgroup hierarchy under ``root``."""
    unified = v2_root(root)
    if unified == root:
        return {"unified": root}
    found = {"unified": unified} if unified else {}
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if entry != unified and (entry / "cgroup.procs").exists():
                found[entry.name] = entry
    return found


class ContainerCgroup:
    """``<hierarchy>/<top>/<name>`` in every hierarchy; the path handed to the engine as ``cgroup_parent``."""

    def __init__(self, top: str, name: str, *, root: Path = CGROUP_ROOT) -> None:
        self.relative = f"{top}/{name}"
        self.root = root
        self._oom_eventfd: int | None = None   # v1: notified when the parent's memory limit runs out
        self._ooms = 0

    def limit_memory(self, memory_bytes: int | None) -> int | None:
        """The memory limit to give the engine for the container (call before it is created).

        v1 with a limit: the parent is made here with ``memory_bytes`` and an OOM notification, and the
        container gets one page more (see the module's docstring). Otherwise (v2, no limit, no cgroupfs
        to write, e.g. rootless) the container's own limit is the task's.
        """
        memory = self.root / "memory" / self.relative
        try:
            if memory_bytes is None or detect_version(self.root) != 1:
                return memory_bytes
            memory.mkdir(parents=True, exist_ok=True)
            (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
            if (memory / "memory.memsw.limit_in_bytes").exists():
                (memory / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            self._oom_eventfd = _oom_notification(memory)
        except (OSError, CgroupError):
            return memory_bytes
        return memory_bytes + PAGE

    def _oom_seen(self) -> bool:
        if self._oom_eventfd is not None:
            with contextlib.suppress(BlockingIOError):
                self._ooms += os.eventfd_read(self._oom_eventfd)
        return self._ooms > 0

    @property
    def cgroup_parent(self) -> str:
        return "/" + self.relative

    def _group(self) -> TaskCgroup | None:
        dirs = {key: base / self.relative for key, base in _hierarchies(self.root).items()
                if (base / self.relative).is_dir()}
        if not dirs:
            return None
        try:
            version = detect_version(self.root)
        except CgroupError:
            return None
        if version == 1 and not {"memory", "pids"} <= set(dirs):
            return None
        return TaskCgroup(version, dirs)

    def stats(self) -> CgroupStats | None:
        """Totals of everything that ran below the parent; None when the engine made no such cgroup."""
        group = self._group()
        if group is None:
            return None
        with contextlib.suppress(OSError, KeyError, ValueError):
            stats = group.stats()
            return dataclasses.replace(stats, oom_killed=True) if self._oom_seen() else stats
        return None

    def remove(self, *, wait_seconds: float = 0.0) -> None:
        """Delete the parent (and whatever the engine left below it, e.g. Podman's conmon) everywhere.

        Raises CgroupError while something still runs inside (a conmon about to exit); the caller retries later.
        """
        if self._oom_eventfd is not None:
            os.close(self._oom_eventfd)
            self._oom_eventfd = None
        deadline = time.monotonic() + wait_seconds
        while True:
            busy = []
            for base in _hierarchies(self.root).values():
                directory = base / self.relative
                if not directory.is_dir():
                    continue
                for child in sorted(directory.glob("**/"), key=lambda p: len(p.parts), reverse=True):
                    try:
                        child.rmdir()
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        busy.append(f"{child}: {exc.strerror}")
            if not busy:
                return
            if time.monotonic() >= deadline:
                raise CgroupError("cannot remove cgroup: " + "; ".join(busy[:3]))
            time.sleep(0.02)


def _oom_notification(memory: Path) -> int:
    """An eventfd the kernel signals each time cgroup v1 ``memory`` runs out of memory (cgroup.event_control)."""
    eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    control = os.open(memory / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
    try:
        (memory / "cgroup.event_control").write_text(f"{eventfd} {control}")
    except OSError:
        os.close(eventfd)
        raise
    finally:
        os.close(control)
    return eventfd


def sweep_orphans(top: str, alive: set[str], *, root: Path = CGROUP_ROOT) -> list[str]:
    """Remove parents under ``top`` whose container name is not in ``alive``; busy ones are left alone."""
    names: set[str] = set()
    for base in _hierarchies(root).values():
        with contextlib.suppress(OSError):
            names.update(entry.name for entry in (base / top).iterdir() if entry.is_dir())
    removed = []
    for name in sorted(names - alive):
        with contextlib.suppress(CgroupError, OSError):
            ContainerCgroup(top, name, root=root).remove()
            removed.append(name)
    return removed
