"""What an attack is: a hostile task, its positive control, a host-side judge, and the claim it tests.

An attack's ``run`` raises ``AttackSucceeded`` when the host saw it get through, ``ControlFailed`` when its
positive control did not work (a missing tool, a probe that cannot reach what it may: nothing can be judged),
and returns when the isolation held. ``unclaimed`` reads a backend's ``capabilities()`` and says why the
backend does not promise to stop the attack (None: it does), so an expected loss follows from the claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..api.task import IsolationLevel, NetworkMode
from ..executors.base import (ExecutionRequest, ExecutionResult, ExecutorCapabilities, NetworkPolicy, ResourceLimits,
                              TerminationReason)
from ..executors.workspace import create_workspace, remove_workspace

BB = "/bin/busybox"   # every command goes through it, so a busybox-only image runs the attacks too
MiB = 1 << 20


class AttackSucceeded(Exception):
    """The attack got through, as seen from the host; the message is the evidence."""


class ControlFailed(Exception):
    """The positive control did not work, so the attack cannot be judged here; the message says why."""


class Runs(Protocol):
    """What an attack needs of a backend: to run one request."""

    name: str

    async def execute(self, request: ExecutionRequest) -> ExecutionResult: ...


@dataclass(frozen=True)
class Attack:
    key: str                                    # the row's name in docs/capabilities.md
    sentence: str                               # the promise, as a user would say it
    needs: str                                  # what the task and the host must have for it (for --help)
    run: Callable[[Runs], Awaitable[None]]
    # why a backend with these capabilities does not promise to stop it (None: it claims to)
    unclaimed: Callable[[ExecutorCapabilities], str | None] = lambda caps: None
    harmful_unclaimed: bool = False             # never run where it is not claimed: it would harm the machine
    selection: Mapping[str, Any] = field(default_factory=dict)   # hostile() keywords selection checks


def hostile(workspace: Path, script: str, *, marker: str = "hostile", timeout: float = 20.0,
            memory: int | None = None, pids: int | None = None, disk: int | None = None,
            network: NetworkMode = NetworkMode.NONE, seccomp: str = "RuntimeDefault",
            outputs: tuple[str, ...] = (), run_as_user: int | None = 65534, image: str = "") -> ExecutionRequest:
    """A request running ``script`` under /bin/sh; ``marker`` is $0, so it is in every shell's cmdline.

    The floor is None: the attack is what judges the isolation, not selection."""
    return ExecutionRequest(
        task_id=f"escape-{uuid.uuid4().hex[:8]}", argv=("/bin/sh", "-c", script, marker), workspace=workspace,
        image=image, output_paths=outputs, timeout_seconds=timeout, seccomp_profile=seccomp,
        run_as_user=run_as_user,
        limits=ResourceLimits(memory_bytes=memory, max_processes=pids, disk_bytes=disk,
                              network=NetworkPolicy(network)),
        minimum_isolation=IsolationLevel.NONE)


@contextlib.contextmanager
def scratch_workspace() -> Iterator[Path]:
    """A fresh workspace any task user may enter, removed afterwards whatever the task left in it.

    It sits in a private parent of its own, removed with it: Docker and Podman copy their container init
    beside the workspace (``executors/containers/busybox.py``), and selftest must leave nothing in $TMPDIR."""
    parent = Path(tempfile.mkdtemp(prefix="expbuild-selftest-"))
    try:
        os.chmod(parent, 0o755)
        path = create_workspace(parent)
        try:
            os.chmod(path, 0o755)
            yield path
        finally:
            remove_workspace(path)
    finally:
        shutil.rmtree(parent)


async def settle(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` if it still runs (the executor then kills what it started) and wait for it to end."""
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def new_marker() -> str:
    return f"expbuild-marker-{uuid.uuid4().hex[:12]}"


def below(caps: ExecutorCapabilities, level: IsolationLevel, what: str) -> str | None:
    """Why a backend below ``level`` does not claim to stop the attack: ``what`` it shares with the host."""
    if caps.isolation_level >= level:
        return None
    return f"isolation {caps.isolation_level.value}, below {level.value}: {what}"


def ended_as(result: ExecutionResult, reason: TerminationReason, exit_code: int, what: str, why: str = "") -> None:
    """AttackSucceeded unless the run ended ``reason`` with ``exit_code`` (``what`` names the run, ``why`` the loss)."""
    if (result.reason, result.exit_code) != (reason, exit_code):
        raise AttackSucceeded(f"{what} ended {result.reason.value} with exit {result.exit_code}, not "
                              f"{reason.value} with {exit_code}" + (f": {why}" if why else ""))


def short(data: bytes | str, limit: int = 300) -> str:
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    text = " ".join(text.split())
    return text if len(text) <= limit else "..." + text[-limit:]
