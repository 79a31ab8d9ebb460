"""Attack on the host's memory: allocate past the task's memory limit."""

from __future__ import annotations

from ..executors.base import ExecutorCapabilities, TerminationReason
from .attack import (BB, Attack, AttackSucceeded, ControlFailed, MiB, Runs, ended_as, hostile, scratch_workspace,
                     short)

LIMIT = 64 * MiB
ATTEMPT = 200_000_000   # bytes held in one shell variable, about three times the limit
CONTROL = 8_000_000     # the same allocation, well under the limit


def _hold(size: int) -> str:
    return f"x=$({BB} head -c {size} /dev/zero | {BB} tr '\\0' a); echo allocated ${{#x}}"


async def memory(executor: Runs) -> None:
    """The kernel must kill the allocation at the limit and the executor report it as OOMKilled (exit 137);
    the same allocation under the limit succeeds (the control)."""
    with scratch_workspace() as workspace:
        control = await executor.execute(hostile(workspace, _hold(CONTROL), memory=LIMIT, timeout=30))
        if f"allocated {CONTROL}".encode() not in control.stdout:
            raise ControlFailed(f"the task could not hold {CONTROL} bytes under a {LIMIT // MiB} MiB limit "
                                f"({control.reason.value}): {short(control.stderr)}")
        result = await executor.execute(hostile(workspace, _hold(ATTEMPT), memory=LIMIT, timeout=30))
    if b"allocated" in result.stdout:
        raise AttackSucceeded(f"the task held {ATTEMPT} bytes under a {LIMIT // MiB} MiB limit")
    ended_as(result, TerminationReason.OOM_KILLED, 137, "the allocation", "the kernel's kill was not reported")


def _no_memory_limit(caps: ExecutorCapabilities) -> str | None:
    return None if caps.supports_memory_limit else "no memory limit"


ATTACKS = [
    Attack("memory", "allocating past the memory limit is OOM killed",
           f"busybox head and tr; a memory limit ({LIMIT // MiB} MiB), about 200 MB allocated",
           memory, unclaimed=_no_memory_limit, selection={"memory": LIMIT}),
]
