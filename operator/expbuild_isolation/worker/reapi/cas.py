"""Content-addressable storage for the REAPI worker: the server's CAS and a local, size-bounded cache.

(A little over 400 lines: the two share the digest checks and the error mapping to gRPC codes, which
would otherwise be a third module imported by both and nothing else.)

``RemoteCas`` speaks ContentAddressableStorage and ByteStream: small blobs in
batches, large ones streamed (a batch must stay under the server's ~2 MiB
message limit). ``LocalCas`` keeps fetched blobs on disk by digest so repeated
inputs are not fetched twice; it is safe under concurrent actions: a blob being
fetched is fetched once and awaited by everyone else who wants it, files appear
by atomic rename only after their digest was checked, and a blob an action has
pinned is never evicted under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

from .protos import bs_grpc, bs_pb2, code_pb2, error_details_pb2, grpc, re_grpc, re_pb2, status_pb2

BATCH_BLOB_LIMIT = 1 << 20         # larger blobs go through ByteStream
BATCH_TOTAL_LIMIT = 3 << 19        # 1.5 MiB of payload per batch request
STREAM_CHUNK = 1 << 20


class CasError(Exception):
    """A blob could not be read or written; ``code`` is the gRPC status that should end the lease."""

    def __init__(self, message: str, code: int = code_pb2.UNAVAILABLE) -> None:
        super().__init__(message)
        self.code = code


class MissingBlobs(CasError):
    """Blobs the action needs are not in the server's CAS: the client must upload them and retry."""

    def __init__(self, digests: Iterable[re_pb2.Digest]) -> None:
        self.digests = list({key(d): d for d in digests}.values())
        super().__init__(_missing_message(self.digests), code_pb2.FAILED_PRECONDITION)


def missing_blobs_status(digests: Iterable[re_pb2.Digest]) -> status_pb2.Status:
    """FAILED_PRECONDITION with one ``MISSING`` violation per blob, as the REAPI Execute docs require.

    Clients (Bazel among them) read the ``blobs/<hash>/<size>`` subjects, upload those blobs and retry.
    """
    unique = list({key(d): d for d in digests}.values())
    failure = error_details_pb2.PreconditionFailure()
    for digest in unique:
        failure.violations.add(type="MISSING", subject=blob_subject(digest),
                               description="not in the CAS; upload it and retry")
    status = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=_missing_message(unique))
    status.details.add().Pack(failure)
    return status


def blob_subject(digest: re_pb2.Digest) -> str:
    return f"blobs/{digest.hash}/{digest.size_bytes}"


def _missing_message(digests: list[re_pb2.Digest]) -> str:
    shown = ", ".join(blob_subject(d) for d in digests[:5])
    more = f" and {len(digests) - 5} more" if len(digests) > 5 else ""
    return f"{len(digests)} input blob(s) missing from the CAS: {shown}{more}"


def digest_of(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def key(digest: re_pb2.Digest) -> str:
    return f"{digest.hash}-{digest.size_bytes}"


@dataclass(frozen=True)
class CasCounters:
    """Cumulative traffic, read by the metrics exporter."""

    bytes_in: int = 0
    bytes_out: int = 0
    hits: int = 0
    misses: int = 0


class RemoteCas:
    """The server's CAS over one gRPC channel."""

    def __init__(self, channel: grpc.aio.Channel, instance: str = "") -> None:
        self.instance = instance
        self._cas = re_grpc.ContentAddressableStorageStub(channel)
        self._bytestream = bs_grpc.ByteStreamStub(channel)
        self.bytes_in = 0
        self.bytes_out = 0

    def _resource(self, digest: re_pb2.Digest, upload: bool = False) -> str:
        prefix = f"{self.instance}/" if self.instance else ""
        middle = f"uploads/{uuid.uuid4()}/" if upload else ""
        return f"{prefix}{middle}blobs/{digest.hash}/{digest.size_bytes}"

    async def find_missing(self, digests: Iterable[re_pb2.Digest]) -> list[re_pb2.Digest]:
        unique = {key(d): d for d in digests if d.size_bytes > 0}
        if not unique:
            return []
        response = await self._call(self._cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(instance_name=self.instance, blob_digests=list(unique.values()))))
        return list(response.missing_blob_digests)

    async def read_small(self, digests: list[re_pb2.Digest]) -> dict[str, bytes]:
        """Blobs at most BATCH_BLOB_LIMIT each, in as few batch requests as the size limit allows."""
        found: dict[str, bytes] = {}
        missing: list[re_pb2.Digest] = []
        for batch in _batches(digests):
            response = await self._call(self._cas.BatchReadBlobs(
                re_pb2.BatchReadBlobsRequest(instance_name=self.instance, digests=batch)))
            for item in response.responses:
                if item.status.code == code_pb2.NOT_FOUND:
                    missing.append(item.digest)
                    continue
                if item.status.code != code_pb2.OK:
                    raise CasError(f"blob {key(item.digest)}: {item.status.message or item.status.code}")
                found[key(item.digest)] = item.data
                self.bytes_in += len(item.data)
        if missing:
            raise MissingBlobs(missing)
        return found

    async def read_stream(self, digest: re_pb2.Digest, sink) -> None:  # type: ignore[no-untyped-def]
        """Stream one blob into ``sink`` (a binary file)."""
        try:
            async for chunk in self._bytestream.Read(bs_pb2.ReadRequest(resource_name=self._resource(digest))):
                sink.write(chunk.data)
                self.bytes_in += len(chunk.data)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise MissingBlobs([digest]) from None
            raise _cas_error(exc, f"reading blob {key(digest)}") from None

    async def upload(self, blobs: dict[str, tuple[re_pb2.Digest, bytes | Path]]) -> None:
        """Upload what the server is missing; each value is (digest, bytes or a file path)."""
        missing = await self.find_missing(d for d, _ in blobs.values())
        small = [(d, blobs[key(d)][1]) for d in missing if d.size_bytes <= BATCH_BLOB_LIMIT]
        large = [(d, blobs[key(d)][1]) for d in missing if d.size_bytes > BATCH_BLOB_LIMIT]
        for batch in _batches([d for d, _ in small]):
            sources = {key(d): s for d, s in small}
            requests = [re_pb2.BatchUpdateBlobsRequest.Request(digest=d, data=_read(sources[key(d)])) for d in batch]
            response = await self._call(self._cas.BatchUpdateBlobs(
                re_pb2.BatchUpdateBlobsRequest(instance_name=self.instance, requests=requests)))
            for item in response.responses:
                if item.status.code != code_pb2.OK:
                    raise CasError(f"upload of {key(item.digest)} refused: {item.status.message}")
            self.bytes_out += sum(d.size_bytes for d in batch)
        for digest, source in large:
            await self._write_stream(digest, source)

    async def _write_stream(self, digest: re_pb2.Digest, source: bytes | Path) -> None:
        resource = self._resource(digest, upload=True)

        async def requests() -> AsyncIterator[bs_pb2.WriteRequest]:
            offset = 0
            with (open(source, "rb") if isinstance(source, Path) else contextlib.nullcontext()) as handle:
                while True:
                    chunk = handle.read(STREAM_CHUNK) if handle else source[offset:offset + STREAM_CHUNK]
                    last = offset + len(chunk) >= digest.size_bytes
                    yield bs_pb2.WriteRequest(resource_name=resource if offset == 0 else "", write_offset=offset,
                                              data=chunk, finish_write=last)
                    offset += len(chunk)
                    if last or not chunk:
                        return
        try:
            response = await self._bytestream.Write(requests())
        except grpc.aio.AioRpcError as exc:
            raise _cas_error(exc, f"uploading blob {key(digest)}") from None
        self.bytes_out += digest.size_bytes
        if response.committed_size not in (digest.size_bytes, -1):
            raise CasError(f"upload of {key(digest)} committed {response.committed_size} bytes")

    @staticmethod
    async def _call(awaitable):  # type: ignore[no-untyped-def]
        try:
            return await awaitable
        except grpc.aio.AioRpcError as exc:
            raise _cas_error(exc, "CAS request") from None


def _cas_error(exc: grpc.aio.AioRpcError, what: str) -> CasError:
    code = code_pb2.FAILED_PRECONDITION if exc.code() == grpc.StatusCode.NOT_FOUND else code_pb2.UNAVAILABLE
    return CasError(f"{what} failed: {exc.code().name} {exc.details()}", code)


def _read(source: bytes | Path) -> bytes:
    return source.read_bytes() if isinstance(source, Path) else source


def _batches(digests: list[re_pb2.Digest]) -> list[list[re_pb2.Digest]]:
    batches: list[list[re_pb2.Digest]] = []
    current: list[re_pb2.Digest] = []
    total = 0
    for digest in digests:
        if current and total + digest.size_bytes > BATCH_TOTAL_LIMIT:
            batches.append(current)
            current, total = [], 0
        current.append(digest)
        total += digest.size_bytes + 100
    if current:
        batches.append(current)
    return batches


class LocalCas:
    """Blobs on local disk by digest, least recently used evicted past ``max_bytes``."""

    def __init__(self, root: Path, max_bytes: int, remote: RemoteCas | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.remote = remote
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(exist_ok=True)
        self._index: OrderedDict[str, int] = OrderedDict()
        self._pins: dict[str, int] = {}
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self.total_bytes = 0
        self.hits = 0
        self.misses = 0
        self._load_index()

    def _load_index(self) -> None:
        entries = []
        for shard in self.root.iterdir():
            if shard.name == "tmp" or not shard.is_dir():
                continue
            for blob in shard.iterdir():
                with contextlib.suppress(OSError):
                    info = blob.stat()
                    entries.append((info.st_mtime, blob.name, info.st_size))
        for _, name, size in sorted(entries):
            self._index[name] = size
            self.total_bytes += size
        for stale in self._tmp.iterdir():
            stale.unlink(missing_ok=True)

    def path(self, digest: re_pb2.Digest) -> Path:
        return self.root / digest.hash[:2] / key(digest)

    def has(self, digest: re_pb2.Digest) -> bool:
        return digest.size_bytes == 0 or key(digest) in self._index

    def read(self, digest: re_pb2.Digest) -> bytes:
        if digest.size_bytes == 0:
            return b""
        self._touch(key(digest))
        return self.path(digest).read_bytes()

    def put(self, digest: re_pb2.Digest, data: bytes) -> None:
        """Store ``data`` (checked against ``digest``)."""
        if hashlib.sha256(data).hexdigest() != digest.hash or len(data) != digest.size_bytes:
            raise CasError(f"blob {key(digest)} arrived corrupted", code_pb2.UNAVAILABLE)
        with self._tempfile() as (handle, tmp):
            handle.write(data)
            handle.flush()
            self._commit(digest, tmp)

    def put_file(self, digest: re_pb2.Digest, source: Path) -> None:
        """Copy a file whose digest the caller already computed (an action's output)."""
        if self.has(digest) or digest.size_bytes > self.max_bytes // 4:
            return
        with self._tempfile() as (handle, tmp), open(source, "rb") as src:
            while chunk := src.read(STREAM_CHUNK):
                handle.write(chunk)
            handle.flush()
            self._commit(digest, tmp)

    @contextlib.contextmanager
    def _tempfile(self):  # type: ignore[no-untyped-def]
        fd, name = tempfile.mkstemp(dir=self._tmp)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle, tmp
        finally:
            tmp.unlink(missing_ok=True)

    def _commit(self, digest: re_pb2.Digest, tmp: Path) -> None:
        target = self.path(digest)
        target.parent.mkdir(exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, target)  # atomic: a reader sees the whole blob or none
        name = key(digest)
        if name not in self._index:
            self._index[name] = digest.size_bytes
            self.total_bytes += digest.size_bytes
        self._touch(name)
        self._evict()

    def _touch(self, name: str) -> None:
        if name in self._index:
            self._index.move_to_end(name)

    def _evict(self) -> None:
        for name in list(self._index):
            if self.total_bytes <= self.max_bytes:
                return
            if self._pins.get(name):
                continue
            size = self._index.pop(name)
            self.total_bytes -= size
            (self.root / name[:2] / name).unlink(missing_ok=True)

    @contextlib.contextmanager
    def pinned(self, digests: Iterable[re_pb2.Digest]):  # type: ignore[no-untyped-def]
        """Keep these blobs from eviction while an action copies them into its workspace."""
        names = [key(d) for d in digests if d.size_bytes > 0]
        for name in names:
            self._pins[name] = self._pins.get(name, 0) + 1
        try:
            yield
        finally:
            for name in names:
                self._pins[name] -= 1
                if not self._pins[name]:
                    del self._pins[name]
            self._evict()

    async def missing(self, digests: Iterable[re_pb2.Digest]) -> list[re_pb2.Digest]:
        """The blobs neither cached here nor in the server's CAS (one FindMissingBlobs for the rest)."""
        wanted = {key(d): d for d in digests if not self.has(d)}
        if not wanted or self.remote is None:
            return list(wanted.values())
        return await self.remote.find_missing(wanted.values())

    async def ensure(self, digests: Iterable[re_pb2.Digest]) -> None:
        """Make every blob local: hits cost nothing, misses are fetched once however many actions want them.

        Call inside ``pinned(digests)`` so nothing ensured is evicted before it is used.
        """
        wanted = {key(d): d for d in digests if d.size_bytes > 0}
        mine: list[re_pb2.Digest] = []
        waits: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        for name, digest in wanted.items():
            if name in self._index:
                self.hits += 1
                self._touch(name)
            elif name in self._inflight:
                self.hits += 1
                waits.append(self._inflight[name])
            else:
                self.misses += 1
                self._inflight[name] = loop.create_future()
                mine.append(digest)
        try:
            await self._fetch(mine)
        except BaseException as exc:
            for digest in mine:
                future = self._inflight.pop(key(digest))
                if not future.done():
                    future.set_exception(exc if isinstance(exc, CasError) else CasError(str(exc)))
                    future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        for digest in mine:
            self._inflight.pop(key(digest)).set_result(None)
        for future in waits:
            await asyncio.shield(future)

    async def _fetch(self, digests: list[re_pb2.Digest]) -> None:
        if not digests:
            return
        if self.remote is None:
            raise CasError(f"blob {key(digests[0])} is not cached and there is no remote CAS")
        small = {key(d): d for d in digests if d.size_bytes <= BATCH_BLOB_LIMIT}
        for name, data in (await self.remote.read_small(list(small.values()))).items():
            if name not in small:
                raise CasError(f"the server returned blob {name} that was not asked for")
            self.put(small[name], data)
        for digest in (d for d in digests if d.size_bytes > BATCH_BLOB_LIMIT):
            with self._tempfile() as (handle, tmp):
                await self.remote.read_stream(digest, handle)
                handle.flush()
                if _file_sha256(tmp) != digest.hash or tmp.stat().st_size != digest.size_bytes:
                    raise CasError(f"blob {key(digest)} arrived corrupted")
                self._commit(digest, tmp)

    def copy_into(self, digest: re_pb2.Digest, dir_fd: int, name: str, executable: bool) -> None:
        """A private copy named ``name`` in the open directory ``dir_fd`` (never a hard link: the sandbox may
        chown or rewrite its inputs). Created with O_EXCL | O_NOFOLLOW: never through an existing name."""
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
        try:
            if digest.size_bytes:
                self._touch(key(digest))
                with open(self.path(digest), "rb") as source, os.fdopen(os.dup(fd), "wb") as target:
                    shutil.copyfileobj(source, target, STREAM_CHUNK)
            os.fchmod(fd, 0o555 if executable else 0o444)
        finally:
            os.close(fd)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(STREAM_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
