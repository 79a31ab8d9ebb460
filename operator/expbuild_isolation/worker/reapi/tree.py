"""Input roots in, output trees out: REAPI Directory protos <-> a workspace on disk.

Inputs: the Directory tree is fetched level by level (one batch per level),
every file blob made local through ``LocalCas``, then copied into the workspace.
When a blob is missing, ``missing_inputs`` surveys the whole action so the
client learns every blob to upload at once, not one per retry.

Outputs follow the REAPI rules: files with their executable bit, directories as
``Tree`` messages (root plus every distinct child Directory), symlinks reported
as symlinks with their target text. The walk treats the workspace as hostile:
it opens everything relative to a directory fd with O_NOFOLLOW, so a symlink is
reported, never followed, and nothing outside the workspace is ever read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ...executors.base import DEFAULT_OUTPUT_LIMIT
from ...executors.workspace import OutputBudget, OutputRefused, WorkspaceError, hash_file, make_dirs_beneath
from .cas import CasError, LocalCas, digest_of, key
from .protos import code_pb2, re_pb2

_CHUNK = 1 << 20


# -- inputs -------------------------------------------------------------------------------------------------


async def fetch_directories(cas: LocalCas, root: re_pb2.Digest) -> dict[str, re_pb2.Directory]:
    """Every Directory of the input root, by digest key."""
    found: dict[str, re_pb2.Directory] = {}
    level = [root]
    while level:
        todo = list({key(d): d for d in level if key(d) not in found}.values())
        found.update(await _read_directories(cas, todo))
        level = [node.digest for digest in todo for node in found[key(digest)].directories]
    return found


async def missing_inputs(cas: LocalCas, command: re_pb2.Digest, root: re_pb2.Digest) -> list[re_pb2.Digest]:
    """Every input blob of an action that the CAS lacks, as far as the tree can be read.

    One FindMissingBlobs per directory level and one for all files (cached blobs are not asked for).
    A missing directory hides its subtree: whatever is missing below it is reported on the next try.
    """
    missing = {key(d): d for d in await cas.missing([command])}
    found: dict[str, re_pb2.Directory] = {}
    level = [root]
    while level:
        todo = list({key(d): d for d in level if key(d) not in found and key(d) not in missing}.values())
        absent = {key(d): d for d in await cas.missing(todo)}
        missing.update(absent)
        present = [d for d in todo if key(d) not in absent]
        found.update(await _read_directories(cas, present))
        level = [node.digest for digest in present for node in found[key(digest)].directories]
    missing.update((key(d), d) for d in await cas.missing(input_files(found)))
    return list(missing.values())


async def _read_directories(cas: LocalCas, digests: list[re_pb2.Digest]) -> dict[str, re_pb2.Directory]:
    found: dict[str, re_pb2.Directory] = {}
    with cas.pinned(digests):
        await cas.ensure(digests)
        for digest in digests:
            directory = re_pb2.Directory()
            directory.ParseFromString(cas.read(digest))
            found[key(digest)] = directory
    return found


def input_files(directories: dict[str, re_pb2.Directory]) -> list[re_pb2.Digest]:
    return list({key(f.digest): f.digest for d in directories.values() for f in d.files}.values())


def materialize(cas: LocalCas, directories: dict[str, re_pb2.Directory], root: re_pb2.Digest, target: Path) -> int:
    """Write the tree under ``target`` (an empty directory); returns the number of files. Call with the file
    blobs pinned.

    We write as root, and the tree is the client's: every directory is made by us (mkdirat, so never over an
    existing name) and entered with O_NOFOLLOW, every file created with O_EXCL | O_NOFOLLOW, and a Directory
    naming one entry twice (a symlink and a subdirectory, say: the subdirectory's files would go through the
    link) is refused.
    """
    count = 0
    root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        stack: list[tuple[re_pb2.Digest, str]] = [(root, "")]
        while stack:
            digest, where = stack.pop()
            directory = directories[key(digest)]
            names = [_name(n.name) for n in (*directory.files, *directory.symlinks, *directory.directories)]
            if len(set(names)) != len(names):
                twice = next(n for n in names if names.count(n) > 1)
                raise CasError(f"input directory {where or '.'!r} names {twice!r} twice",
                               code_pb2.INVALID_ARGUMENT)
            fd = _open_made(root_fd, where)
            try:
                for node in directory.files:
                    cas.copy_into(node.digest, fd, node.name, node.is_executable)
                    count += 1
                for link in directory.symlinks:
                    os.symlink(link.target, link.name, dir_fd=fd)
                for child in directory.directories:
                    os.mkdir(child.name, 0o755, dir_fd=fd)
                    stack.append((child.digest, f"{where}/{child.name}".lstrip("/")))
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)
    return count


def _open_made(root_fd: int, relative: str) -> int:
    """A directory we made under the root, reopened component by component without following links."""
    fd = os.dup(root_fd)
    for part in filter(None, relative.split("/")):
        try:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        finally:
            os.close(fd)
        fd = next_fd
    return fd


def _name(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise CasError(f"input root has an invalid path component {name!r}", code_pb2.INVALID_ARGUMENT)
    return name


def prepare_output_parents(workspace: Path, paths: list[str]) -> None:
    """REAPI: the worker creates the parent directory of every output before the command runs; never
    through a symlink of the input root (we are root, the link's target is the client's choice)."""
    for path in paths:
        try:
            make_dirs_beneath(workspace, posixpath.dirname(path))
        except WorkspaceError as exc:
            raise CasError(f"output {path!r}: {exc}", code_pb2.INVALID_ARGUMENT) from None


# -- outputs ------------------------------------------------------------------------------------------------


@dataclass
class CollectedOutputs:
    """What goes into the ActionResult, plus the blobs to upload (digest key -> (digest, bytes or file))."""

    files: list[re_pb2.OutputFile] = field(default_factory=list)
    directories: list[re_pb2.OutputDirectory] = field(default_factory=list)
    file_symlinks: list[re_pb2.OutputSymlink] = field(default_factory=list)
    directory_symlinks: list[re_pb2.OutputSymlink] = field(default_factory=list)
    blobs: dict[str, tuple[re_pb2.Digest, bytes | Path]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def fill(self, result: re_pb2.ActionResult, *, v21: bool) -> None:
        result.output_files.extend(self.files)
        result.output_directories.extend(self.directories)
        result.output_file_symlinks.extend(self.file_symlinks)
        result.output_directory_symlinks.extend(self.directory_symlinks)
        if v21:
            result.output_symlinks.extend(self.file_symlinks + self.directory_symlinks)


def collect(workspace: Path, *, files: tuple[str, ...] = (), directories: tuple[str, ...] = (),
            paths: tuple[str, ...] = (), prefix: str = "", limit: int = DEFAULT_OUTPUT_LIMIT) -> CollectedOutputs:
    """Walk the declared outputs (workspace-relative); paths reported relative to ``prefix`` (the workdir).

    ``limit`` bounds the bytes digested for all outputs together, sparse holes counted: an output (a whole
    directory, if one file in it) that would pass it is a problem, not uploaded.
    """
    out = CollectedOutputs()
    budget = OutputBudget(limit)
    root_fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for path, expected in [(p, "file") for p in files] + [(p, "dir") for p in directories] + \
                              [(p, "any") for p in paths]:
            try:
                _collect_one(root_fd, workspace, path, expected, _reported(path, prefix), out, budget)
            except OutputRefused as exc:
                out.problems.append(str(exc))
    finally:
        os.close(root_fd)
    return out


def _reported(path: str, prefix: str) -> str:
    return os.path.relpath(path, prefix) if prefix else path


def _collect_one(root_fd: int, workspace: Path, path: str, expected: str, reported: str,
                 out: CollectedOutputs, budget: OutputBudget) -> None:
    parent_fd, name = _open_parent(root_fd, path)
    if parent_fd is None:
        return  # a missing output is not the worker's error: the client decides
    try:
        try:
            info = os.lstat(name, dir_fd=parent_fd)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(info.st_mode):
            link = re_pb2.OutputSymlink(path=reported, target=os.readlink(name, dir_fd=parent_fd))
            (out.directory_symlinks if expected == "dir" else out.file_symlinks).append(link)
        elif stat.S_ISREG(info.st_mode) and expected in ("file", "any"):
            digest, executable = _add_file(parent_fd, name, workspace / path, out, budget, reported)
            out.files.append(re_pb2.OutputFile(path=reported, digest=digest, is_executable=executable))
        elif stat.S_ISDIR(info.st_mode) and expected in ("dir", "any"):
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
            try:
                tree = re_pb2.Tree()
                tree.root.CopyFrom(_walk_dir(fd, workspace / path, out, {}, tree, budget, reported))
            finally:
                os.close(fd)
            data = tree.SerializeToString(deterministic=True)
            digest = digest_of(data)
            out.blobs[key(digest)] = (digest, data)
            out.directories.append(re_pb2.OutputDirectory(path=reported, tree_digest=digest))
        else:
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a regular file" \
                if stat.S_ISREG(info.st_mode) else "a special file"
            out.problems.append(f"output {reported!r} was declared as a {'file' if expected == 'file' else 'directory'}"
                                f" but is {kind}")
    finally:
        os.close(parent_fd)


def _open_parent(root_fd: int, path: str) -> tuple[int | None, str]:
    """An fd of the output's parent directory, reached without following symlinks (None: it is not there)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    fd = os.dup(root_fd)
    for part in parts[:-1]:
        try:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None, ""
            raise
        os.close(fd)
        fd = next_fd
    return fd, parts[-1] if parts else "."


def _add_file(dir_fd: int, name: str, host_path: Path, out: CollectedOutputs, budget: OutputBudget,
              reported: str) -> tuple[re_pb2.Digest, bool]:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        budget.take(reported, info.st_size)
        if info.st_size <= _CHUNK:
            small = os.read(fd, _CHUNK + 1)
            if len(small) > info.st_size:
                raise OutputRefused(f"output {reported!r} grew while it was being digested; not digested")
            hasher, size = hashlib.sha256(small), len(small)
        else:
            small = b""
            hasher, size = hash_file(fd, reported, info.st_size)
    finally:
        os.close(fd)
    digest = re_pb2.Digest(hash=hasher.hexdigest(), size_bytes=size)
    # small files are kept in memory (the task cannot swap them afterwards); big ones are re-read by path,
    # and the upload's digest check on the server rejects anything changed in between
    out.blobs[key(digest)] = (digest, bytes(small) if size <= _CHUNK else host_path)
    return digest, bool(info.st_mode & 0o111)


def _walk_dir(fd: int, host_path: Path, out: CollectedOutputs, seen: dict[str, None],
              tree: re_pb2.Tree, budget: OutputBudget, reported: str) -> re_pb2.Directory:
    """One Directory message for the open directory ``fd``; children are appended to ``tree.children``."""
    directory = re_pb2.Directory()
    for entry in sorted(os.listdir(fd)):
        info = os.lstat(entry, dir_fd=fd)
        if stat.S_ISLNK(info.st_mode):
            directory.symlinks.add(name=entry, target=os.readlink(entry, dir_fd=fd))
        elif stat.S_ISREG(info.st_mode):
            digest, executable = _add_file(fd, entry, host_path / entry, out, budget, f"{reported}/{entry}")
            directory.files.add(name=entry, digest=digest, is_executable=executable)
        elif stat.S_ISDIR(info.st_mode):
            child_fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                child = _walk_dir(child_fd, host_path / entry, out, seen, tree, budget, f"{reported}/{entry}")
            finally:
                os.close(child_fd)
            data = child.SerializeToString(deterministic=True)
            digest = digest_of(data)
            if key(digest) not in seen:
                seen[key(digest)] = None
                tree.children.append(child)
            directory.directories.add(name=entry, digest=digest)
        else:
            out.problems.append(f"{host_path / entry}: special file skipped")
    return directory
