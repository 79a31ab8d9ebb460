"""Attacks on the host's processes: see or kill one, fork without end, leave a daemon behind the timeout."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from ..api.task import IsolationLevel
from ..executors.base import ExecutorCapabilities, TerminationReason
from .attack import (BB, Attack, AttackSucceeded, ControlFailed, Runs, below, ended_as, hostile, new_marker,
                     scratch_workspace, settle, short)
from .host_side import host_is_responsive, kill_leftovers, shells_named

FORK_BOMB_PIDS = 64


async def host_processes(executor: Runs) -> None:
    """A host process with a marker in its command line: the task lists every cmdline it can see and tries
    to kill it. The task's own shell (its $0, ``looker``) must be in the list: the walk works."""
    marker, looker = new_marker(), new_marker()
    # Python, not a shell: a shell may exec its last command and lose $0, and the host may have no busybox.
    host_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", marker])
    try:
        script = (f"for f in /proc/[0-9]*/cmdline; do {BB} cat $f; echo; done; "
                  f"{BB} kill -9 {host_proc.pid} 2>/dev/null; true")
        with scratch_workspace() as workspace:
            result = await executor.execute(hostile(workspace, script, marker=looker))
        if looker.encode() not in result.stdout:
            raise ControlFailed(f"the task could not list its own processes: {short(result.stderr)}")
        if host_proc.poll() is not None:
            raise AttackSucceeded(f"the task killed host process {host_proc.pid}")
        if marker.encode() in result.stdout:
            raise AttackSucceeded(f"the task saw host process {host_proc.pid}'s command line")
    finally:
        host_proc.kill()
        host_proc.wait()


async def fork_bomb(executor: Runs) -> None:
    """The host must still start a process in time while the bomb runs, and nothing of it may be left."""
    marker = new_marker()
    script = f"f(){{ f|f& }}; f; while :; do {BB} sleep 1; done"
    with scratch_workspace() as workspace:
        task = asyncio.ensure_future(executor.execute(
            hostile(workspace, script, marker=marker, pids=FORK_BOMB_PIDS, timeout=5)))
        try:
            await asyncio.sleep(2)
            responsive = await host_is_responsive()
            result = await task
        finally:
            await settle(task)
            leftovers = kill_leftovers(marker)
    if not responsive:
        raise AttackSucceeded("the host took more than 3 s to start /bin/true while the bomb ran")
    if leftovers:
        raise AttackSucceeded(f"{len(leftovers)} process(es) of the bomb outlived the task")
    # Ended at its timeout or its pids limit, or its own shell gave up when the kernel refused it a fork
    # (busybox ash exits then: a Docker or Podman task can end so before its timeout).
    refused = result.reason is TerminationReason.NON_ZERO_EXIT and b"fork" in result.stderr
    if result.reason not in (TerminationReason.DEADLINE_EXCEEDED, TerminationReason.PIDS_LIMIT) and not refused:
        raise AttackSucceeded(f"the task ended {result.reason.value} ({result.message or 'no message'}), "
                              f"not at its timeout or its pids limit: {short(result.stderr)}")
    if not refused and not result.message:
        raise AttackSucceeded("the task's end carries no message saying why it was stopped")


async def daemon(executor: Runs) -> None:
    """A grandchild in its own session outlives its shell; the host must see it while the task runs (the
    control) and not after the timeout ended the task."""
    marker = new_marker()
    script = f"{BB} setsid /bin/sh -c 'while :; do {BB} sleep 1; done' {marker}-daemon & {BB} sleep 100"
    seen = False
    with scratch_workspace() as workspace:
        task = asyncio.ensure_future(executor.execute(hostile(workspace, script, marker=marker, timeout=2)))
        try:
            while not task.done():
                seen = seen or bool(shells_named(f"{marker}-daemon"))
                await asyncio.sleep(0.05)
            result = await task
        finally:
            await settle(task)
            leftovers = kill_leftovers(marker)
    if not seen:
        raise ControlFailed(f"the host never saw the task's daemon running: {short(result.stderr)}")
    if leftovers:
        raise AttackSucceeded(f"{len(leftovers)} process(es) of the task outlived its timeout")
    ended_as(result, TerminationReason.DEADLINE_EXCEEDED, 124, "the task")


def _no_pids_limit(caps: ExecutorCapabilities) -> str | None:
    return None if caps.supports_pids_limit else "no pids limit: a fork bomb would take the machine down"


ATTACKS = [
    Attack("host_processes", "host processes are invisible", "busybox cat and kill", host_processes,
           unclaimed=lambda caps: below(caps, IsolationLevel.CONTAINER, "it shares the host's PID namespace")),
    Attack("fork_bomb", "a fork bomb is contained", f"sh, busybox sleep; a pids limit ({FORK_BOMB_PIDS})",
           fork_bomb, unclaimed=_no_pids_limit, harmful_unclaimed=True, selection={"pids": FORK_BOMB_PIDS}),
    Attack("daemon", "a daemonized grandchild does not outlive the timeout", "busybox setsid and sleep", daemon),
]
