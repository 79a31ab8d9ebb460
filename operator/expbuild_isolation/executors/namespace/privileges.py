"""Dropping a namespace sandbox's privileges: the capability bounding set first, the rest just before exec.

Runs in the launcher's forked children; imports nothing heavy.
"""

from __future__ import annotations

import os
import signal

from .launch import LaunchSpec
from ..linux import (PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG,
                    capset_none, check, libc)

_LAST_CAP: list[int] = []


def last_cap() -> int:
    """The highest capability number of this kernel (read once; the zygote reads it before forking)."""
    if not _LAST_CAP:
        with open("/proc/sys/kernel/cap_last_cap") as handle:
            _LAST_CAP.append(int(handle.read()))
    return _LAST_CAP[0]


def drop_bounding_set() -> None:
    """No capability can come back through exec (what we hold now stays usable until drop_privileges).

    A spare does this before its task is known; a failure is reported to that task."""
    for cap in range(last_cap() + 1):
        check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"prctl(CAPBSET_DROP, {cap})")
    check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(CAP_AMBIENT_CLEAR_ALL)")


def drop_privileges(spec: LaunchSpec) -> None:
    """Everything else: no groups, the task's uid/gid, no capabilities at all, no_new_privs."""
    os.setgroups([])
    if spec.gid is not None:
        os.setresgid(spec.gid, spec.gid, spec.gid)
    if spec.uid is not None:
        os.setresuid(spec.uid, spec.uid, spec.uid)
    capset_none()
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
