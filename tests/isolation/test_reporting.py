"""What every backend reports about a task, the same way: log tails and OOM kills.

Not attacks (they have no row in docs/capabilities.md), but promises each backend must keep alike, so they
run on the escape suite's ``backend`` fixture: every backend, and EXPBUILD_REQUIRE_BACKENDS turns a backend
that cannot start into a failure. The facts are judged from what the kernel and the host see.
"""

from __future__ import annotations

import dataclasses

import pytest

from expbuild_isolation.executors.base import TerminationReason
from expbuild_isolation.selftest.attack import hostile

BB = "/bin/busybox"
MiB = 1 << 20
KiB = 1 << 10


async def test_a_flooded_stdout_keeps_its_last_bytes(backend, workspace, marker):
    """stdoutTail means the last bytes: after a flood, the final line is there and nothing of the flood's head."""
    limit = 64 * KiB
    script = (f"echo first-line-{marker}; {BB} head -c {8 * MiB} /dev/zero | {BB} tr '\\0' x; echo; "
              f"echo last-line-{marker}; "
              f"echo first-err-{marker} >&2; {BB} head -c {4 * MiB} /dev/zero | {BB} tr '\\0' y >&2; echo >&2; "
              f"echo last-err-{marker} >&2")
    request = dataclasses.replace(hostile(workspace, script, timeout=60), log_limit_bytes=limit)
    result = await backend.execute(request)
    assert result.reason == TerminationReason.COMPLETED, result
    assert result.stdout.endswith(f"\nlast-line-{marker}\n".encode()), result.stdout[-200:]
    assert result.stderr.endswith(f"\nlast-err-{marker}\n".encode()), result.stderr[-200:]
    assert len(result.stdout) == limit and len(result.stderr) == limit
    assert result.stdout_truncated and result.stderr_truncated
    assert f"first-line-{marker}".encode() not in result.stdout
    assert set(result.stdout[:-len(f"\nlast-line-{marker}\n")]) == {ord("x")}


async def test_a_short_stdout_is_kept_whole_and_not_flagged(backend, workspace, marker):
    result = await backend.execute(hostile(workspace, f"echo out-{marker}; echo err-{marker} >&2"))
    assert (result.stdout, result.stderr) == (f"out-{marker}\n".encode(), f"err-{marker}\n".encode())
    assert not result.stdout_truncated and not result.stderr_truncated


def claims_memory_limit(backend) -> None:  # type: ignore[no-untyped-def]
    if not backend.executor.capabilities().supports_memory_limit:
        pytest.skip(f"{backend.name} claims no memory limit (capabilities()), so it reports no OOM kills")


async def test_a_child_killed_at_the_memory_limit_is_reported_as_oom_killed(backend, workspace):
    """The shell goes on after the kernel kills its child: Docker and Podman said Completed."""
    claims_memory_limit(backend)
    hog = f'x=$({BB} head -c 200000000 /dev/zero | {BB} tr "\\0" a)'   # allocates in the child shell
    script = f"{BB} sh -c '{hog}'; echo child=$?; echo survived"
    result = await backend.execute(hostile(workspace, script, memory=64 * MiB, timeout=60))
    assert b"survived" in result.stdout and b"child=137" in result.stdout, result   # SIGKILLed, shell went on
    assert (result.reason, result.exit_code) == (TerminationReason.OOM_KILLED, 137), result
    assert "memory limit" in result.message


async def test_page_cache_at_the_memory_limit_is_not_an_oom_kill(backend, workspace):
    """Writing more than the limit fills and reclaims page cache up to the limit: no process is killed."""
    claims_memory_limit(backend)
    script = f"{BB} dd if=/dev/zero of=file bs=1048576 count=160 2>/dev/null && echo wrote"
    result = await backend.execute(hostile(workspace, script, memory=64 * MiB, timeout=60))
    assert result.stdout == b"wrote\n", result
    assert (result.reason, result.exit_code) == (TerminationReason.COMPLETED, 0), result
