"""What the host sees of a task: its processes in /proc, connections to a listening socket, its own pulse.

The judges of every attack look through these, never through what the task says about itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path

from .attack import ControlFailed


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker`` (a shell's $0 or its script)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def shells_named(name: str) -> list[int]:
    """Host pids of ``sh -c SCRIPT NAME`` shells: the last argument is their $0 (not text of a script)."""
    found = []
    for pid in processes_with(name):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:
            continue
        if argv[-1] == name.encode():
            found.append(pid)
    return found


def kill_leftovers(marker: str) -> list[int]:
    """The host pids an attack left running (``marker`` in their command line), SIGKILLed once found: the
    judge gets the evidence and the host is clean whatever it decides."""
    found = processes_with(marker)
    for pid in found:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return found


class TcpServer:
    """Counts connections to a listening socket on the host."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def reached_from(self, address: str) -> None:
        """The server really counts connections: one from the host itself (a positive control)."""
        socket.create_connection((address, self.port), timeout=2).close()
        for _ in range(100):
            if self.connections:
                break
            time.sleep(0.02)
        if self.connections != 1:
            raise ControlFailed(f"a connection from the host to {address}:{self.port} was not counted "
                                f"({self.connections} seen)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def host_address() -> str:
    """An address of this host that is not loopback (for "network None reaches nothing")."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))   # TEST-NET: nothing is sent, only a route is chosen
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


async def host_is_responsive(limit_seconds: float = 3.0) -> bool:
    """Whether the host still starts a process within ``limit_seconds``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    proc = await asyncio.create_subprocess_exec("/bin/true")
    await proc.wait()
    return loop.time() - start < limit_seconds
