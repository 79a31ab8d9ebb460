"""Bounded capture of a task's stdout and stderr: the last N bytes are kept, the rest counted.

The tail, not the head: a build that fails says why at its end, and ``status.logs.stdoutTail`` promises the
last bytes. Every backend feeds its streams through ``BoundedBuffer`` as they arrive, whatever their size.
"""

from __future__ import annotations

import asyncio
from collections import deque


class BoundedBuffer:
    """Keeps the tail of a stream; ``truncated`` says whether anything was dropped.

    Chunks are kept as they came and whole ones dropped from the front, so a flood costs O(chunk) per feed,
    not a move of the whole kept tail each time.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self._chunks: deque[bytes] = deque()
        self._kept = 0     # bytes in _chunks; may exceed limit by less than the first chunk
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if not chunk or self.limit == 0:
            return
        if len(chunk) >= self.limit:
            self._chunks.clear()
            self._chunks.append(bytes(chunk[-self.limit:]))
            self._kept = self.limit
            return
        self._chunks.append(bytes(chunk))
        self._kept += len(chunk)
        while self._kept - len(self._chunks[0]) >= self.limit:
            self._kept -= len(self._chunks.popleft())

    @property
    def truncated(self) -> bool:
        return self.total > min(self._kept, self.limit)

    def data(self) -> bytes:
        return b"".join(self._chunks)[-self.limit:] if self.limit else b""

    def text(self) -> str:
        return self.data().decode("utf-8", "replace")


async def pump(stream: asyncio.StreamReader, buffer: BoundedBuffer) -> None:
    """Read ``stream`` to EOF into ``buffer``."""
    while chunk := await stream.read(65536):
        buffer.feed(chunk)
