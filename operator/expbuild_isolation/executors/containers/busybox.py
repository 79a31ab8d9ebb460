"""A static busybox for the containers' own init (``deadline.py``), where the container engine can read it.

The init must run in any image, a distroless one without a shell included, so it is a busybox of ours,
bind-mounted read-only into the container. It must be *static*: a dynamic one would need a loader and
libraries from the task's image. "Static" is judged from the file itself, not its name: an ELF executable
for this machine's architecture without a PT_INTERP program header (the header that names the dynamic
loader; the ELF format is in the System V ABI, and `man 5 elf`).

The engine's daemon reads a bind mount's source from the *host's* filesystem. Inside the node agent's pod
that is not the pod's own ``/bin/busybox``, so the executor copies the binary and the init's scripts once
into a directory both see at the same path (the workspace's parent: the chart's ``agent.workDir``, a
hostPath mounted at the same path) and mounts that. The copy is named after its content and checked before
use: one that someone else owns or may change, or whose bytes differ, is never mounted.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
CANDIDATES = ("/bin/busybox", "/usr/bin/busybox", "/usr/local/bin/busybox")
APPLETS = ("sh", "env", "setsid")   # what the init scripts run
PT_INTERP = 3
# The shell features the init script needs beyond POSIX (busybox's ash has them unless built without).
_FEATURE_PROBE = "q=\\'; x=\"a'b\"; printf '%s' \"${x//$q/Q}\"; printf 'c\\0' | { IFS= read -r -d '' y; printf '%s' \"$y\"; }"


class NoStaticBusybox(Exception):
    """No usable static busybox here, or no place to put a copy: the message says which and why."""


def elf_machine_and_interp(path: Path) -> tuple[int, bool] | None:
    """(e_machine, has PT_INTERP) of an ELF executable, or None when ``path`` is not one we can read."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(64)
            if len(header) < 52 or header[:4] != b"\x7fELF" or header[4] not in (1, 2) or header[5] not in (1, 2):
                return None
            wide, order = header[4] == 2, "<" if header[5] == 1 else ">"
            machine, = struct.unpack_from(order + "H", header, 0x12)
            if wide:
                phoff, = struct.unpack_from(order + "Q", header, 0x20)
                phentsize, phnum = struct.unpack_from(order + "HH", header, 0x36)
            else:
                phoff, = struct.unpack_from(order + "I", header, 0x1C)
                phentsize, phnum = struct.unpack_from(order + "HH", header, 0x2A)
            if phnum == 0 or phentsize < 4:
                return None
            handle.seek(phoff)
            table = handle.read(phentsize * phnum)
    except OSError:
        return None
    if len(table) < phentsize * phnum:
        return None
    types = [struct.unpack_from(order + "I", table, i * phentsize)[0] for i in range(phnum)]
    return machine, PT_INTERP in types


def this_machine() -> int | None:
    """The e_machine of the running interpreter: a busybox for another architecture will not run here."""
    found = elf_machine_and_interp(Path(os.path.realpath(sys.executable)))
    return found[0] if found else None


def static_busybox_problem(path: Path) -> str | None:
    """Why ``path`` cannot serve as the init's busybox, or None when it can."""
    elf = elf_machine_and_interp(path)
    if elf is None:
        return f"{path}: not a readable ELF executable"
    machine, dynamic = elf
    if dynamic:
        return f"{path}: dynamically linked (it has a PT_INTERP header; Debian's static one is busybox-static)"
    if machine != this_machine():
        return f"{path}: built for another architecture (ELF machine {machine})"
    try:
        listed = subprocess.run([str(path), "--list"], capture_output=True, text=True, timeout=10).stdout.split()
        probe = subprocess.run([str(path), "sh", "-c", _FEATURE_PROBE], capture_output=True, text=True,
                               timeout=10, env={}).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{path}: does not run here: {exc}"
    missing = [applet for applet in APPLETS if applet not in listed]
    if missing:
        return f"{path}: has no {', '.join(missing)} applet"
    if probe != "aQbc":
        return f"{path}: its sh lacks ${{var//pattern/text}} or read -d (busybox ash with bash compatibility)"
    return None


def find_static_busybox(candidates: tuple[str, ...] = CANDIDATES) -> tuple[Path | None, str]:
    """The first usable static busybox, or None and every candidate's reason."""
    reasons = []
    for candidate in candidates:
        path = Path(candidate)
        if not path.exists():
            continue
        problem = static_busybox_problem(path)
        if problem is None:
            return path, ""
        reasons.append(problem)
    return None, "; ".join(reasons) or f"none of {', '.join(candidates)} exists"


class InitFiles:
    """A static busybox and the scripts it runs, copied into a directory the engine can read (made once).

    The copy is a directory named after its content; one that exists but is not exactly ours (another
    owner, another mode, other bytes, a link) is never used: a private directory is made instead.
    """

    def __init__(self, busybox: Path, scripts: dict[str, str]) -> None:
        self.files = {"busybox": (busybox.read_bytes(), 0o755)}
        self.files.update({name: (text.encode(), 0o644) for name, text in scripts.items()})
        digest = hashlib.sha256()
        for name, (data, mode) in sorted(self.files.items()):
            digest.update(f"{name}\0{mode}\0{len(data)}\0".encode() + data)
        self.name = f".expbuild-init-{digest.hexdigest()[:16]}"
        self._placed: dict[Path, tuple[Path, list[tuple[int, ...]]]] = {}

    def copy_in(self, parent: Path) -> Path:
        """The checked directory of copies in ``parent`` (a host path the engine can read)."""
        parent = Path(parent)
        known = self._placed.get(parent)
        if known is not None and self._identity(known[0]) == known[1]:
            return known[0]
        target = parent / self.name
        if not self._is_ours(target):
            made = self._make(parent)
            try:
                os.rename(made, target)
            except OSError:   # someone else's, or a concurrent copy won the race: use it if it is ours
                if not self._is_ours(target):
                    target = made   # a private one beside it: never mount what someone else may change
                else:
                    _remove(made)
        self._placed[parent] = (target, self._identity(target))
        return target

    def _is_ours(self, directory: Path) -> bool:
        """Our uid, writable by us alone, no links, exactly our files with exactly our bytes."""
        try:
            if not _owned_by_us(os.lstat(directory), stat.S_IFDIR, 0o755):
                return False
            if sorted(os.listdir(directory)) != sorted(self.files):
                return False
            for name, (data, mode) in self.files.items():
                path = directory / name
                if not _owned_by_us(os.lstat(path), stat.S_IFREG, mode):
                    return False
                with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as handle:
                    if handle.read() != data:
                        return False
        except OSError:
            return False
        return True

    def _make(self, parent: Path) -> Path:
        try:
            made = Path(tempfile.mkdtemp(prefix=".expbuild-init-", dir=parent))
            for name, (data, mode) in self.files.items():
                (made / name).write_bytes(data)
                os.chmod(made / name, mode)
            os.chmod(made, 0o755)
        except OSError as exc:
            raise NoStaticBusybox(f"cannot copy the container init into {parent}: {exc.strerror}") from None
        return made

    def _identity(self, directory: Path) -> list[tuple[int, ...]]:
        found = []
        for path in (directory, *(directory / name for name in sorted(self.files))):
            try:
                info = os.lstat(path)
            except OSError:
                return []
            found.append((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_mode, info.st_uid))
        return found


def _owned_by_us(info: os.stat_result, kind: int, mode: int) -> bool:
    return stat.S_IFMT(info.st_mode) == kind and info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) == mode


def _remove(directory: Path) -> None:
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            entry.unlink()
        directory.rmdir()


class ContainerInit:
    """An executor's source of init directories: finds the busybox once, copies per directory, and says once
    in the log when containers must run without their own end (no static busybox, no room for a copy)."""

    def __init__(self, engine: str, scripts: dict[str, str]) -> None:
        self.engine, self.scripts = engine, scripts
        self._lock = threading.Lock()   # the executor creates containers from several threads
        self._files: InitFiles | None = None
        self._problems: set[str] = set()

    def directory(self, parent: Path) -> str | None:
        with self._lock:
            if self._files is None and not self._problems:
                busybox, why = find_static_busybox()
                if busybox is None:
                    self._say_once(f"no static busybox ({why})")
                    return None
                self._files = InitFiles(busybox, self.scripts)
            if self._files is None:
                return None
            try:
                return str(self._files.copy_in(parent))
            except NoStaticBusybox as exc:
                self._say_once(str(exc))
                return None

    def _say_once(self, problem: str) -> None:
        if problem not in self._problems:
            self._problems.add(problem)
            log.warning("%s: %s: its containers run without their own end (they do not stop when the worker "
                        "dies or hangs; a restarted worker's sweep removes them)", self.engine, problem)
