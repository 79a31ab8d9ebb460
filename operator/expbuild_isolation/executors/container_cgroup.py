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
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from .cgroups import CGROUP_ROOT, CgroupError, CgroupStats, TaskCgroup, detect_version, v2_root


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
            return group.stats()
        return None

    def remove(self, *, wait_seconds: float = 0.0) -> None:
        """Delete the parent (and whatever the engine left below it, e.g. Podman's conmon) everywhere.

        Raises CgroupError while something still runs inside (a conmon about to exit); the caller retries later.
        """
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
