"""Bounded capture of a task's stdout and stderr: the last N bytes are kept, the rest counted."""

from __future__ import annotations

import asyncio


class BoundedBuffer:
    """Keeps the tail of a stream; ``truncated`` says whether anything was dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self._data = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._data += chunk
        if len(self._data) > self.limit:
            del self._data[: len(self._data) - self.limit]

    @property
    def truncated(self) -> bool:
        return self.total > len(self._data)

    def data(self) -> bytes:
        return bytes(self._data)

    def text(self) -> str:
        return self._data.decode("utf-8", "replace")


async def pump(stream: asyncio.StreamReader, buffer: BoundedBuffer) -> None:
    """Read ``stream`` to EOF into ``buffer``."""
    while chunk := await stream.read(65536):
        buffer.feed(chunk)
