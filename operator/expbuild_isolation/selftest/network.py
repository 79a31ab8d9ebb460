"""Attacks on the host's network: a server on the host's loopback must not be reachable from a task."""

from __future__ import annotations

import asyncio

from ..api.task import NetworkMode
from ..executors.base import ExecutorCapabilities
from .attack import BB, Attack, AttackSucceeded, ControlFailed, Runs, hostile, new_marker, scratch_workspace, short
from .host_side import TcpServer, free_port


def nc_round_trip(port: int, word: str) -> str:
    """Shell: a listener on the sandbox's own loopback writes what it gets to ``got`` in the workspace, and
    the probe's nc sends ``word`` to it: the positive control that nc works and reaches what it may.

    The listener's stdin is held open (a background job's is /dev/null: busybox nc then half-closes at once
    and a client seeing that EOF quits before sending); the client retries until the listener is up. The
    sleep feeding the listener ends with the task."""
    return (f"({BB} sleep 60 | {BB} nc -l -p {port} > got 2> listener.err) & i=0; "
            f"while [ ! -s got ] && [ $i -lt 100 ]; do "
            f"echo {word} | {BB} nc -w 1 127.0.0.1 {port}; {BB} sleep 0.1; i=$((i+1)); done; echo tries=$i; ")


def round_trip_arrived(workspace, word: str, stdout: bytes) -> None:  # type: ignore[no-untyped-def]
    """Raise ControlFailed unless the sandbox's own listener got ``word`` (read from the workspace)."""
    try:
        got = (workspace / "got").read_text()
    except OSError as exc:
        got = f"<{exc.strerror}>"
    if got != f"{word}\n":
        try:
            listener = (workspace / "listener.err").read_text()
        except OSError:
            listener = ""
        raise ControlFailed(f"nc could not reach a listener on the sandbox's own loopback (got {got[:80]!r}; "
                            f"{short(stdout)} {short(listener)})")


async def tcp_to_host(executor: Runs) -> None:
    """The server counts connections on the host; one comes from the host itself, so any more is the task's."""
    server = TcpServer("127.0.0.1")
    try:
        server.reached_from("127.0.0.1")
        word = new_marker()
        script = nc_round_trip(free_port(), word) + f"echo hi | {BB} nc -w 2 127.0.0.1 {server.port}; echo rc=$?"
        with scratch_workspace() as workspace:
            result = await executor.execute(hostile(workspace, script, network=NetworkMode.LOCALHOST))
            await asyncio.sleep(0.2)   # a connection the task made last is counted by the server's thread
            round_trip_arrived(workspace, word, result.stdout)
        if server.connections != 1:
            raise AttackSucceeded(f"the task connected to 127.0.0.1:{server.port} on the host "
                                  f"({server.connections - 1} connection(s) counted by the server)")
    finally:
        server.close()


def _no_loopback_of_its_own(caps: ExecutorCapabilities) -> str | None:
    if NetworkMode.LOCALHOST in caps.network_policies:
        return None
    offered = ", ".join(m.value for m in NetworkMode if m in caps.network_policies) or "none"
    return f"no network policy Localhost (offers {offered}): it shares the host's network"


ATTACKS = [
    Attack("tcp_to_host", "a server on the host's loopback is unreachable",
           "busybox nc and sleep (network Localhost); a listener on the host's 127.0.0.1", tcp_to_host,
           unclaimed=_no_loopback_of_its_own, selection={"network": NetworkMode.LOCALHOST}),
]
