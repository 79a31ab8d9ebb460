"""The in-pod helpers as data: the prepare script (init container) and the supervisor script.

Both run under a static busybox that the init container copies from the
supervisor image (the operator's own image) into a shared emptyDir, so task
images need no shell. The scripts live in ``expbuild_isolation/data/`` and are
passed inline as ``sh -c`` arguments; every path and argv element travels as a
positional parameter, never spliced into shell text.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

TOOLS_DIR = "/expbuild"
BUSYBOX = f"{TOOLS_DIR}/bin/busybox"
WORKSPACE = "/workspace"
TERMINATION_LOG = "/dev/termination-log"
CGROUP_ROOT = "/sys/fs/cgroup"


@cache
def script(name: str) -> str:
    """The text of ``data/<name>.sh`` (``supervisor`` or ``prepare``), without comments and blank lines."""
    text = resources.files("expbuild_isolation").joinpath("data", f"{name}.sh").read_text()
    return "\n".join(line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")) + "\n"


def supervised_command(argv: list[str], outputs: list[str], *, busybox: str = BUSYBOX,
                       termination_log: str = TERMINATION_LOG, cgroup_root: str = CGROUP_ROOT,
                       workspace: str = WORKSPACE) -> list[str]:
    """The task container's command: the supervisor running ``argv``, then digesting ``outputs``."""
    return [busybox, "sh", "-c", script("supervisor"), "expbuild-supervisor", busybox, termination_log,
            cgroup_root, workspace, str(len(argv)), *argv, *outputs]


def supervised_outputs(command: list[str]) -> list[str] | None:
    """The output paths a ``supervised_command`` digests (None when ``command`` is not one).

    The status attributes the supervisor's digests, reported by index, to these: the paths the run really
    used, whatever the task's spec says now.
    """
    head = 10  # busybox sh -c SCRIPT expbuild-supervisor busybox termination_log cgroup_root workspace N
    if len(command) < head or command[4] != "expbuild-supervisor" or not command[head - 1].isdigit():
        return None
    argc = int(command[head - 1])
    return list(command[head + argc:]) if len(command) >= head + argc else None


def prepare_command(busybox: str, copies: list[list[str]], *, working_dir: str = "",
                    workspace: str = WORKSPACE) -> list[str]:
    """The init container's command: install the busybox, place inputs, create the working dir.

    ``copies`` holds ``["file", src, dst, mode]`` and ``["dir", src, dst]`` steps.
    """
    steps = [arg for copy in copies for arg in copy]
    return [busybox, "sh", "-c", script("prepare"), "expbuild-prepare", busybox, TOOLS_DIR, workspace,
            working_dir, *steps]
