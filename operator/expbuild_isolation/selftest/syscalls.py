"""Attack on the kernel's surface: a system call the default seccomp profile denies.

No compiler needed: busybox ``unshare -U`` asks for a user namespace (``unshare(CLONE_NEWUSER)``, the door
to mounts and netfilter as "root"), and the host reads the answer from /proc: whether the command it runs
lives in another user namespace than the task's shell. Without a filter it must (the control).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ..executors.base import ExecutionResult, ExecutorCapabilities
from .attack import (BB, Attack, AttackSucceeded, ControlFailed, Runs, hostile, new_marker, scratch_workspace, settle,
                     short)
from .host_side import shells_named

PROFILE = "RuntimeDefault"


async def user_namespace(executor: Runs) -> None:
    with scratch_workspace() as workspace:
        entered, control = await _unshare_user(executor, workspace, "Unconfined")
        if not entered:
            raise ControlFailed(f"unshare -U gave the task no user namespace even without a filter "
                                f"(exit {control.exit_code}): {short(control.stderr)}")
        entered, _ = await _unshare_user(executor, workspace, PROFILE)
    if entered:
        raise AttackSucceeded(f"unshare(CLONE_NEWUSER) went through under {PROFILE}: the host saw the task's "
                              f"command in a user namespace of its own")


async def _unshare_user(executor: Runs, workspace: Path, profile: str) -> tuple[bool, ExecutionResult]:
    """Run ``unshare -U`` in the task; whether the host saw its command in another user namespace than the
    task's shell. The command waits (10 s at most) until the host has looked and made ``measured``."""
    marker = new_marker()
    inner = f"{marker}-userns"
    (workspace / "measured").unlink(missing_ok=True)
    wait = f"i=0; while [ ! -e measured ] && [ $i -lt 100 ]; do {BB} sleep 0.1; i=$((i+1)); done"
    script = f"{BB} unshare -U /bin/sh -c '{wait}' {inner}; echo unshare=$?"
    task = asyncio.ensure_future(executor.execute(hostile(workspace, script, marker=marker, seccomp=profile)))
    entered = None
    try:
        while not task.done() and entered is None:
            entered = _in_another_user_namespace(inner, marker)
            await asyncio.sleep(0.05)
        return bool(entered), await task
    finally:
        await settle(task)


def _in_another_user_namespace(inner: str, outer: str) -> bool | None:
    """None until the host sees both shells; then whether their user namespaces differ (and let it end)."""
    inner_pids, outer_pids = shells_named(inner), shells_named(outer)
    if not inner_pids or not outer_pids:
        return None
    try:
        namespaces = {os.readlink(f"/proc/{pid}/ns/user") for pid in (inner_pids[0], outer_pids[0])}
        Path(f"/proc/{inner_pids[0]}/cwd/measured").touch()
    except OSError:
        return None
    return len(namespaces) == 2


def _no_default_profile(caps: ExecutorCapabilities) -> str | None:
    if PROFILE in caps.seccomp_profiles:
        return None
    offered = ", ".join(sorted(caps.seccomp_profiles)) or "none"
    return f"no seccomp profile {PROFILE} (offers {offered}): nothing refuses unshare(CLONE_NEWUSER)"


ATTACKS = [
    Attack("user_namespace", "the default seccomp profile refuses a user namespace",
           "busybox unshare and sleep; a kernel that lets any user make a user namespace (the control)",
           user_namespace, unclaimed=_no_default_profile),
]
