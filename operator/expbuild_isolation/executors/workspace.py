"""The task's workspace: inputs placed before start, outputs collected after exit.

Everything here treats the workspace as hostile after the command ran: a path
is resolved component by component with O_NOFOLLOW, so an output that is (or
passes through) a symlink is refused instead of followed, and nothing outside
the workspace is ever opened on the task's behalf.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .base import DEFAULT_OUTPUT_LIMIT, OutputFile
from .mounts import unmount_workspace

_CHUNK = 1 << 20


@dataclass(frozen=True)
class InputBlob:
    """One file to place: path relative to the workspace, bytes, mode."""

    path: str
    content: bytes
    executable: bool = False


class WorkspaceError(Exception):
    """An input could not be placed; the message names the path."""


class BlockedPath(WorkspaceError):
    """A directory could not be made because ``where`` (relative to the workspace) is in the way: a symlink,
    a file (``is_file``), or something the kernel refused (``what`` says which, in words)."""

    def __init__(self, message: str, where: str, what: str, *, is_file: bool) -> None:
        super().__init__(message)
        self.where, self.what, self.is_file = where, what, is_file


def create_workspace(parent: str | os.PathLike[str] | None = None, *, prefix: str = "xt-") -> Path:
    """A fresh, private directory for one task (mode 0700 until an executor widens it)."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def place_inputs(workspace: Path, inputs: Iterable[InputBlob]) -> None:
    """Write each input under the workspace; refuses paths that would leave it."""
    root = workspace.resolve()
    for blob in inputs:
        target = (root / blob.path)
        if os.path.isabs(blob.path) or ".." in Path(blob.path).parts:
            raise WorkspaceError(f"input {blob.path!r} would leave the workspace")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.resolve().parent != target.parent.resolve() or not str(target.resolve()).startswith(str(root)):
            raise WorkspaceError(f"input {blob.path!r} would leave the workspace")
        target.write_bytes(blob.content)
        target.chmod(0o755 if blob.executable else 0o644)


def remove_workspace(workspace: Path) -> None:
    """Delete the workspace whatever the task did to it (read-only dirs included), and the disk-limited
    tmpfs it may have become (``namespace/disk_limit.py``, ``mounts.py``)."""
    if not workspace.exists():
        return
    unmount_workspace(workspace)

    def _make_writable_and_retry(func, path, _exc):  # type: ignore[no-untyped-def]
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
        func(path)

    shutil.rmtree(workspace, onerror=_make_writable_and_retry)


@contextlib.contextmanager
def workspace_with(inputs: Iterable[InputBlob], parent: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A fresh workspace holding the inputs, removed afterwards on every path."""
    workspace = create_workspace(parent)
    try:
        place_inputs(workspace, inputs)
        yield workspace
    finally:
        remove_workspace(workspace)


def make_dirs_beneath(workspace: Path, relative: str, *, mode: int = 0o755) -> None:
    """``mkdir -p`` of ``relative`` under ``workspace``, never through a symlink.

    The workspace can hold links with any target before the task runs (REAPI input trees carry them), and
    we create directories as root: each component is made with mkdirat and entered with O_NOFOLLOW, so a
    component that exists as a symlink (or a file) is refused, naming it, instead of followed.
    """
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if relative.startswith("/") or ".." in parts:
        raise WorkspaceError(f"{relative!r} is not a path inside the workspace")
    fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, part in enumerate(parts):
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, mode, dir_fd=fd)
            try:
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                where = "/".join(parts[:index + 1])
                link = _is_symlink(fd, part)
                what = "a symlink" if link else exc.strerror.lower()
                raise BlockedPath(f"{where!r} is {what}; directories are never created through it "
                                  f"(making {relative!r} in the workspace)", where, what,
                                  is_file=exc.errno == errno.ENOTDIR and not link) from None
            os.close(fd)
            fd = next_fd
    finally:
        os.close(fd)


def _open_beneath(root_fd: int, relative: str) -> int:
    """Open ``relative`` under ``root_fd`` without following any symlink on the way."""
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise OutputRefused(f"output {relative!r} is not a path inside the workspace")
    fd = os.dup(root_fd)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                next_fd = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_symlink(fd, part):
                    where = "is" if last else f"passes through {'/'.join(parts[:index + 1])!r}, which is"
                    raise OutputRefused(f"output {relative!r} {where} a symlink; symlinks are not followed "
                                        f"out of the workspace") from None
                if exc.errno == errno.ENOENT:
                    raise OutputMissing(f"output {relative!r} was not created") from None
                raise OutputRefused(f"output {relative!r} cannot be read: {exc.strerror}") from None
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _is_symlink(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


class OutputMissing(Exception):
    """A declared output does not exist."""


class OutputRefused(Exception):
    """A declared output is a symlink, a special file, or otherwise unsafe to read."""


def collect_outputs(workspace: Path, paths: Iterable[str], *,
                    limit: int = DEFAULT_OUTPUT_LIMIT) -> tuple[list[OutputFile], list[str]]:
    """Digest each declared output file; returns (files, problems), never following a symlink.

    ``limit`` bounds the bytes digested for all outputs together, by size (a sparse file's holes count: a
    2 GiB file of holes takes as long to hash as 2 GiB of data): an output that would pass it is a problem,
    not hashed. Blocking (it reads every byte): call it off the event loop.
    """
    files: list[OutputFile] = []
    problems: list[str] = []
    budget = OutputBudget(limit)
    root_fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for path in paths:
            try:
                files.append(_digest(root_fd, path, budget))
            except (OutputMissing, OutputRefused) as exc:
                problems.append(str(exc))
    finally:
        os.close(root_fd)
    return files, problems


class OutputBudget:
    """What is left of a task's output limit; ``take`` refuses an output that would pass it."""

    def __init__(self, limit: int) -> None:
        self.limit, self.left = limit, limit

    def take(self, path: str, size: int) -> None:
        if size > self.left:
            raise OutputRefused(f"output {path!r} is {size} bytes (sparse holes count), more than the "
                                f"{self.left} bytes left of the {self.limit}-byte limit on a task's outputs "
                                f"(max_output_bytes in the worker config); not digested")
        self.left -= size


def hash_file(fd: int, path: str, size: int) -> tuple[hashlib._Hash, int]:
    """sha256 of an open file that ``budget.take`` allowed ``size`` bytes of; refuses one that grew."""
    digest = hashlib.sha256()
    read = 0
    while chunk := os.read(fd, _CHUNK):
        read += len(chunk)
        if read > size:
            raise OutputRefused(f"output {path!r} grew while it was being digested; not digested")
        digest.update(chunk)
    return digest, read


def _digest(root_fd: int, path: str, budget: OutputBudget) -> OutputFile:
    fd = _open_beneath(root_fd, path)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise OutputRefused(f"output {path!r} is {kind}; outputs.paths names files")
        budget.take(path, info.st_size)
        digest, size = hash_file(fd, path, info.st_size)
        return OutputFile(path=path, sha256=digest.hexdigest(), size_bytes=size,
                          executable=bool(info.st_mode & 0o111))
    finally:
        os.close(fd)


def chown_tree(root: Path, uid: int) -> None:
    """Give ``root`` and everything under it to ``uid`` (links themselves, never their targets)."""
    os.lchown(root, uid, uid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)
