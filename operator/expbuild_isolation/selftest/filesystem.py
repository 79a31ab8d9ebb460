"""Attacks on the host's files: read a secret, write outside the workspace, smuggle a file out as an output."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from ..api.task import IsolationLevel
from .attack import BB, Attack, AttackSucceeded, ControlFailed, Runs, below, hostile, scratch_workspace, short


async def secret_read(executor: Runs) -> None:
    """A secret in our home and one any user of this host may read (/tmp/<dir 0755>/secret.txt): a backend
    sharing the host's files (host, even as nobody) reads the second."""
    token = f"s3cret-{uuid.uuid4().hex}"
    shared = Path(tempfile.mkdtemp(prefix="expbuild-secret-"))
    secrets = [Path.home() / f".expbuild-secret-{uuid.uuid4().hex[:8]}", shared / "secret.txt"]
    try:
        shared.chmod(0o755)
        for path in secrets:
            path.write_text(token)
            path.chmod(0o644)
        with scratch_workspace() as workspace:
            control = f"readable-{uuid.uuid4().hex}"
            (workspace / "control.txt").write_text(control)   # the same cat must read what the task may read
            (workspace / "control.txt").chmod(0o644)
            script = (f"{BB} cat control.txt; " + "; ".join(f"{BB} cat {p}" for p in secrets) +
                      f"; {BB} cat /proc/1/root{secrets[0]}; true")
            result = await executor.execute(hostile(workspace, script))
        if control.encode() not in result.stdout:
            raise ControlFailed(f"the task could not cat a file of its own workspace: {short(result.stderr)}")
        if token.encode() in result.stdout + result.stderr:
            raise AttackSucceeded("the secret's bytes came out in the task's logs")
    finally:
        secrets[0].unlink(missing_ok=True)
        shutil.rmtree(shared, ignore_errors=True)


async def write_outside(executor: Runs) -> None:
    """One target any user of this host may write (a 1777 directory in /tmp): a backend sharing the host's
    files writes it whatever user it runs the task as."""
    shared = Path(tempfile.mkdtemp(prefix="expbuild-escape-"))
    name = f"expbuild-escape-{uuid.uuid4().hex[:8]}"
    targets = [Path.home() / f".{name}", shared / "escape", Path("/etc") / name, Path("/usr/bin") / name]
    script = "; ".join(f"echo pwned > {t}" for t in targets) + "; echo ok > inside; true"
    try:
        shared.chmod(0o1777)
        with scratch_workspace() as workspace:
            result = await executor.execute(hostile(workspace, script, outputs=("inside",)))
        if [f.path for f in result.output_files] != ["inside"]:   # the same echo wrote where it may
            raise ControlFailed(f"the task could not write its own workspace: {short(result.stderr)}")
        written = [str(t) for t in targets if t.exists()]
        if written:
            raise AttackSucceeded(f"the task wrote {', '.join(written)} on the host")
    finally:
        for target in targets:
            target.unlink(missing_ok=True)
        shutil.rmtree(shared, ignore_errors=True)


async def symlink_output(executor: Runs) -> None:
    """Outputs that are, or pass through, links out of the workspace are refused, not followed; a plain
    output of the same task is collected (the control)."""
    plain = f"plain-{uuid.uuid4().hex}\n"
    script = f"{BB} ln -s /etc/shadow out.txt; {BB} ln -s /etc d; echo {plain.strip()} > plain.txt; true"
    with scratch_workspace() as workspace:
        result = await executor.execute(hostile(workspace, script, outputs=("out.txt", "d/shadow", "plain.txt")))
        made = os.path.islink(workspace / "out.txt") and os.readlink(workspace / "out.txt") == "/etc/shadow"
    collected = {f.path: f for f in result.output_files}
    if not made or "plain.txt" not in collected:
        raise ControlFailed(f"the task did not make its links and its plain output: {short(result.stderr)}")
    if collected["plain.txt"].sha256 != hashlib.sha256(plain.encode()).hexdigest():
        raise ControlFailed("the plain output was collected with a wrong digest")
    followed = sorted(set(collected) - {"plain.txt"})
    if followed:
        raise AttackSucceeded(f"outputs through links out of the workspace were collected: {', '.join(followed)}")
    if len(result.output_problems) != 2 or not all("symlink" in p for p in result.output_problems):
        raise AttackSucceeded(f"the links were not refused as symlinks: {result.output_problems}")


def _shares_files(verb: str):  # type: ignore[no-untyped-def]
    return lambda caps: below(caps, IsolationLevel.FILESYSTEM,
                              f"no root of its own, it shares the host's filesystem ({verb} any user may, "
                              f"even as nobody)")


ATTACKS = [
    Attack("secret_read", "a secret outside the workspace cannot be read",
           "busybox cat; a secret in $HOME and in /tmp on the host", secret_read,
           unclaimed=_shares_files("reads what")),
    Attack("write_outside", "nothing is written outside the workspace",
           "sh; targets in $HOME, /tmp, /etc and /usr/bin on the host", write_outside,
           unclaimed=_shares_files("writes where")),
    Attack("symlink_output", "an output symlink to /etc/shadow is refused", "busybox ln", symlink_output),
]
