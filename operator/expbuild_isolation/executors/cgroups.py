"""Per-task cgroups on v1 (one directory per controller) and v2 (one unified directory).

``TaskCgroup.create`` makes ``<root>/<parent>/<name>`` in every hierarchy a
limit or a statistic needs, sets the limits, and gives the ``cgroup.procs``
files a launcher writes its own pid into *before* it execs the task (so a fork
bomb or an early allocation is inside the limit from the first instruction).
``kill`` ends every process in it (v1: freeze, SIGKILL each pid, thaw; v2:
``cgroup.kill``), ``stats`` reads what the task used, ``remove`` deletes every
directory. ``sweep`` removes what a crashed worker left under the parent.

A cgroup's name ends with ``.<owner pid>``: the sweep only touches cgroups whose
owner is dead, so two workers (or two executors in one test run) never remove
each other's running tasks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CgroupError", "CgroupStats", "TaskCgroup", "cgroup_name", "detect_version", "oom_kills", "sweep",
           "v2_controllers"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer", "blkio")
V2_CONTROLLERS = ("memory", "pids", "cpu", "io")
CPU_PERIOD_US = 100_000


class CgroupError(Exception):
    """A cgroup could not be created, limited or removed; says which file."""


@dataclass(frozen=True)
class CgroupStats:
    cpu_time_seconds: float | None = None
    peak_memory_bytes: int | None = None
    oom_killed: bool = False
    pids_limit_hit: bool = False
    disk_read_bytes: int | None = None
    disk_write_bytes: int | None = None


def v2_root(root: Path = CGROUP_ROOT) -> Path | None:
    """The unified hierarchy's mount point: the root itself (pure v2) or ``unified`` (hybrid)."""
    if (root / "cgroup.controllers").exists():
        return root
    if (root / "unified" / "cgroup.controllers").exists():
        return root / "unified"
    return None


def v2_controllers(root: Path = CGROUP_ROOT) -> set[str]:
    unified = v2_root(root)
    return set(_read(unified / "cgroup.controllers").split()) if unified else set()


def detect_version(root: Path = CGROUP_ROOT) -> int:
    """2 when the unified hierarchy carries the memory and pids controllers, else 1 (hybrid or legacy)."""
    if {"memory", "pids"} <= v2_controllers(root):
        return 2
    if all((root / c).is_dir() for c in ("memory", "pids")):
        return 1
    raise CgroupError(f"no usable cgroup hierarchy under {root}: neither v2 with memory+pids "
                      f"nor v1 memory and pids controllers are mounted")


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as handle:
            handle.write(value)
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


def _safe_name(task_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task_id)[:80] or "task"


def cgroup_name(task_id: str, unique: str = "") -> str:
    """``<task>[<unique>].<owner pid>``: the sweep reads the owner from the suffix."""
    return f"{_safe_name(task_id)}{unique}.{os.getpid()}"


@dataclass
class TaskCgroup:
    """One task's cgroup in every hierarchy it needs."""

    version: int
    dirs: dict[str, Path]                  # controller (v1) or "unified" (v2) -> directory
    procs_files: list[Path] = field(default_factory=list)

    @classmethod
    def create(cls, task_id: str, *, parent: str = "expbuild", version: int | None = None,
               root: Path = CGROUP_ROOT, unique: str = "") -> TaskCgroup:
        version = version or detect_version(root)
        name = cgroup_name(task_id, unique)
        if version == 2:
            base = v2_root(root)
            assert base is not None
            _enable_subtree(base, parent)
            dirs = {"unified": base / parent / name}
        else:
            dirs = {c: root / c / parent / name for c in V1_CONTROLLERS if (root / c).is_dir()}
            if "memory" not in dirs or "pids" not in dirs:
                raise CgroupError(f"cgroup v1 needs the memory and pids controllers under {root}")
        made: list[Path] = []
        try:
            for directory in dirs.values():
                directory.parent.mkdir(exist_ok=True)
                directory.mkdir()
                made.append(directory)
        except OSError as exc:
            for directory in made:
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise CgroupError(f"cannot create cgroup {directory}: {exc.strerror}") from None
        group = cls(version, dirs)
        # cpuacct and cpu are often one hierarchy (cpu,cpuacct): join each distinct directory once.
        seen: set[Path] = set()
        for directory in dirs.values():
            real = directory.resolve()
            if real not in seen:
                seen.add(real)
                group.procs_files.append(directory / "cgroup.procs")
        return group

    def rename(self, task_id: str, unique: str = "") -> None:
        """Give the cgroup a task's name (a spare made before its task was known). Best effort: cgroup v1
        allows rename(2) within a parent, v2 may refuse; a directory that cannot be renamed keeps its name,
        which still ends with the owner's pid."""
        name = cgroup_name(task_id, unique)
        renamed: dict[str, Path] = {}
        moved: dict[Path, Path] = {}
        for key, directory in self.dirs.items():
            target = directory.with_name(name)
            try:
                os.rename(directory, target)
            except OSError:
                target = directory
            renamed[key] = moved[directory] = target
        self.dirs = renamed
        self.procs_files = [moved.get(p.parent, p.parent) / p.name for p in self.procs_files]

    def set_limits(self, *, memory_bytes: int | None, max_processes: int | None, cpu_cores: float | None) -> None:
        if self.version == 2:
            unified = self.dirs["unified"]
            if memory_bytes is not None:
                _write(unified / "memory.max", str(memory_bytes))
                if (unified / "memory.swap.max").exists():
                    _write(unified / "memory.swap.max", "0")
            if max_processes is not None:
                _write(unified / "pids.max", str(max_processes))
            if cpu_cores is not None:
                _write(unified / "cpu.max", f"{max(1000, int(cpu_cores * CPU_PERIOD_US))} {CPU_PERIOD_US}")
            return
        if memory_bytes is not None:
            memory = self.dirs["memory"]
            _write(memory / "memory.limit_in_bytes", str(memory_bytes))
            if (memory / "memory.memsw.limit_in_bytes").exists():
                _write(memory / "memory.memsw.limit_in_bytes", str(memory_bytes))  # no swap beyond the limit
            with contextlib.suppress(CgroupError):
                _write(memory / "memory.swappiness", "0")
        if max_processes is not None:
            _write(self.dirs["pids"] / "pids.max", str(max_processes))
        if cpu_cores is not None and "cpu" in self.dirs:
            _write(self.dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(self.dirs["cpu"] / "cpu.cfs_quota_us", str(max(1000, int(cpu_cores * CPU_PERIOD_US))))

    def _first_pids(self) -> bool:
        """Whether the first hierarchy still lists a process (one read: every hierarchy holds the same ones)."""
        try:
            return bool(self.procs_files[0].read_bytes().strip()) if self.procs_files else False
        except OSError:
            return False

    def pids(self) -> set[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(OSError):
                found.update(int(line) for line in procs.read_text().split())
        return found

    def kill(self, *, wait_seconds: float = 5.0, settle_seconds: float = 0.0) -> None:
        """SIGKILL every process in the cgroup, including ones forked while we kill; wait until empty.

        ``settle_seconds``: the caller knows that what is left is exiting anyway (say, a launcher that
        has reported its task's end); wait up to that long for it to leave before freezing the cgroup.
        """
        if settle_seconds > 0:
            deadline = time.monotonic() + settle_seconds
            pause = 0.0001
            while self._first_pids():
                if time.monotonic() >= deadline:
                    break
                time.sleep(pause)
                pause = min(pause * 2, 0.002)
            else:
                return   # every process joined all hierarchies at once: one empty list says they all are
        if not self.pids():
            return   # nothing inside can fork, and nothing outside writes our cgroup.procs
        if self.version == 2 and (self.dirs["unified"] / "cgroup.kill").exists():
            with contextlib.suppress(CgroupError):
                _write(self.dirs["unified"] / "cgroup.kill", "1")
        else:
            _kill_v1(self.dirs.get("freezer"), self.pids)
        deadline = time.monotonic() + wait_seconds
        pause = 0.0002
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(pause)   # exiting tasks leave within microseconds to milliseconds
            pause = min(pause * 2, 0.005)

    def is_empty(self) -> bool:
        return not self.pids()

    def stats(self) -> CgroupStats:
        return _stats_v2(self.dirs["unified"]) if self.version == 2 else _stats_v1(self.dirs)

    def remove(self) -> None:
        """Delete every directory; kills what is still inside first."""
        if not self.is_empty():
            self.kill()
        problems = []
        for directory in self.dirs.values():
            pause = 0.0005
            for _ in range(60):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        problems.append(f"{directory}: {exc.strerror}")
                        break
                    time.sleep(pause)  # the last exiting task is still being released
                    pause = min(pause * 2, 0.01)
            else:
                problems.append(f"{directory}: still busy")
        if problems:
            raise CgroupError("cannot remove cgroup: " + "; ".join(problems))


def _enable_subtree(base: Path, parent: str) -> None:
    """v2: controllers must be enabled in every ancestor's subtree_control before a child can use them."""
    wanted = [c for c in V2_CONTROLLERS if c in v2_controllers(base.parent if base.name == "unified" else base)]
    node = base
    for part in [*Path(parent).parts, None]:
        enabled = set(_read(node / "cgroup.subtree_control").split())
        missing = [c for c in wanted if c not in enabled]
        if missing:
            _write(node / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
        if part is None:
            break
        node = node / part
        node.mkdir(exist_ok=True)


def _kill_v1(freezer: Path | None, pids) -> None:  # type: ignore[no-untyped-def]
    state = freezer / "freezer.state" if freezer else None
    if state is not None:
        with contextlib.suppress(CgroupError):
            _write(state, "FROZEN")
            for _ in range(200):  # a frozen cgroup cannot fork, so the kill below catches everyone
                if _read(state) == "FROZEN":
                    break
                time.sleep(0.001)
    for pid in pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if state is not None:
        with contextlib.suppress(CgroupError, OSError):
            _write(state, "THAWED")  # SIGKILL is delivered only once the tasks run again


def _int_file(path: Path) -> int | None:
    try:
        return int(_read(path))
    except (OSError, ValueError):
        return None


def _keyed(path: Path) -> dict[str, int]:
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                values[parts[0]] = int(parts[1])
    return values


def _stats_v1(dirs: dict[str, Path]) -> CgroupStats:
    cpu = _int_file(dirs["cpuacct"] / "cpuacct.usage") if "cpuacct" in dirs else None
    memory = dirs["memory"]
    peak = _int_file(memory / "memory.max_usage_in_bytes")
    pids_events = _keyed(dirs["pids"] / "pids.events")
    read = write = None
    if "blkio" in dirs:
        read, write = _blkio_v1(dirs["blkio"] / "blkio.throttle.io_service_bytes")
    return CgroupStats(cpu_time_seconds=cpu / 1e9 if cpu is not None else None, peak_memory_bytes=peak,
                       oom_killed=(oom_kills(memory, 1) or 0) > 0, pids_limit_hit=pids_events.get("max", 0) > 0,
                       disk_read_bytes=read, disk_write_bytes=write)


def oom_kills(memory: Path, version: int) -> int | None:
    """Processes the kernel's OOM killer killed in the cgroup ``memory`` (None: unreadable). v2:
    ``memory.events`` oom_kill, which counts the whole subtree. v1: the oom_kill line of
    ``memory.oom_control``, which counts only the cgroup's OWN processes (a parent never sees its child
    cgroups' kills: see ``containers/cgroup.py`` for how containers are covered there)."""
    counters = _keyed(memory / ("memory.events" if version == 2 else "memory.oom_control"))
    return counters.get("oom_kill")


def _blkio_v1(path: Path) -> tuple[int | None, int | None]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None, None
    read = write = 0
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[1] == "Read":
            read += int(parts[2])
        elif len(parts) == 3 and parts[1] == "Write":
            write += int(parts[2])
    return read, write


def _stats_v2(unified: Path) -> CgroupStats:
    cpu = _keyed(unified / "cpu.stat").get("usage_usec")
    peak = _int_file(unified / "memory.peak")
    pids_events = _keyed(unified / "pids.events")
    read = write = None
    with contextlib.suppress(OSError):
        read = write = 0
        for line in (unified / "io.stat").read_text().splitlines():
            fields = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
            read += int(fields.get("rbytes", 0))
            write += int(fields.get("wbytes", 0))
    return CgroupStats(cpu_time_seconds=cpu / 1e6 if cpu is not None else None, peak_memory_bytes=peak,
                       oom_killed=(oom_kills(unified, 2) or 0) > 0, pids_limit_hit=pids_events.get("max", 0) > 0,
                       disk_read_bytes=read, disk_write_bytes=write)


def pid_alive(pid: str) -> bool:
    """``pid`` (digits) names a live process here; a process of another user counts as alive."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_alive(name: str) -> bool:
    return pid_alive(name.rsplit(".", 1)[-1])


def sweep(parent: str = "expbuild", *, root: Path = CGROUP_ROOT) -> list[Path]:
    """Kill and remove every cgroup under ``parent`` whose owning worker is gone; returns what was removed."""
    bases = [b for b in [v2_root(root)] if b] + [root / c for c in V1_CONTROLLERS if (root / c).is_dir()]
    groups: dict[str, dict[str, Path]] = {}
    for base in bases:
        with contextlib.suppress(OSError):
            for child in (base / parent).iterdir():
                if child.is_dir() and not _owner_alive(child.name):
                    key = "unified" if base == v2_root(root) else base.name
                    groups.setdefault(child.name, {})[key] = child
    removed: list[Path] = []
    for dirs in groups.values():
        version = 2 if set(dirs) == {"unified"} else 1
        group = TaskCgroup(version, {k: v for k, v in dirs.items() if version == 2 or k != "unified"})
        group.procs_files = [d / "cgroup.procs" for d in dirs.values()]
        with contextlib.suppress(CgroupError):
            group.kill()
            group.remove()
            removed.extend(dirs.values())
        if version == 1 and "unified" in dirs:
            with contextlib.suppress(OSError):
                dirs["unified"].rmdir()
    return removed
