"""A container's stdout and stderr, read live from the engine's attach stream, each kept as its own tail.

Why not the engine's log file after the exit: Docker and Podman keep ONE size-bounded, rotated file for both
streams together, so a flood on stderr rotates the end of stdout away (seen: stdout empty after 4 MiB on
stderr), and the file's size decides what survives, not our limit. Attached before the task starts (a cold
container before ``start``, a warm one before its go), the stream carries every byte of both, framed by
stream; each goes into its own ``BoundedBuffer`` (the last N bytes). The engine closes the stream when the
container exits; one thread per running task reads it, so a slow reader never stalls the task's writes for
long and never waits behind another task.

The same connection carries the container's stdin when it was created open (our init, ``deadline.py``):
nothing is ever written to it; when this process dies the kernel closes the connection, the engine closes
the container's stdin, and the init ends the task.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from docker.utils.socket import STDERR, frames_iter

from ..logs import BoundedBuffer


class AttachedOutput:
    """stdout and stderr of one container from attach until the container exits."""

    def __init__(self, api, container_id: str, limit: int, *, stdin: bool = False) -> None:  # type: ignore[no-untyped-def]
        self.stdout, self.stderr = BoundedBuffer(limit), BoundedBuffer(limit)
        self.broken = ""
        params = {"stdout": 1, "stderr": 1, "stream": 1, "logs": 0} | ({"stdin": 1} if stdin else {})
        self._stream = api.attach_socket(container_id, params=params)
        self._thread = threading.Thread(target=self._pump, name=f"attach-{container_id[:12]}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for stream, data in frames_iter(self._stream, tty=False):
                (self.stderr if stream == STDERR else self.stdout).feed(data)
        except (OSError, ValueError) as exc:   # the stream was cut (close() on a stuck stream, a daemon restart)
            self.broken = str(exc) or type(exc).__name__
        finally:
            with contextlib.suppress(OSError):
                self._stream.close()

    def finish(self, timeout: float) -> tuple[BoundedBuffer, BoundedBuffer]:
        """Both tails once the engine has closed the stream (it does when the container exits); after
        ``timeout`` the stream is cut and what arrived is returned."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.close()
            self._thread.join(5)
        return self.stdout, self.stderr

    def close(self) -> None:
        """Cut the stream (the reading thread then ends)."""
        raw = getattr(self._stream, "_sock", self._stream)
        with contextlib.suppress(OSError, AttributeError):
            raw.shutdown(socket.SHUT_RDWR)
