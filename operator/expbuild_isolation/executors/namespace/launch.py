"""What the namespace executor tells its launcher: a spare's shape (``Prepared``) and a task (``LaunchSpec``).

Both travel as JSON over a SOCK_SEQPACKET socket (see ``nsinit.serve``). This module imports nothing
heavy: the launcher uses it in every forked child.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..linux import NAMESPACE_FLAGS

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: str                                # inside the new root
    workspace: str                          # host directory bound at /workspace
    cgroup_procs: list[str] = field(default_factory=list)
    rootfs: str = "host"
    tmp_source: str | None = None           # host directory bound at /tmp (disk-limited tasks) ...
    tmp_size_bytes: int = 64 << 20          # ... else a tmpfs of this size
    network: str = "none"                   # none | localhost | full
    hostname: str = "expbuild"
    uid: int | None = 65534
    gid: int | None = 65534
    seccomp_profile: str | None = "expbuild-default"
    read_only_root: bool = True
    namespaces: list[str] = field(default_factory=lambda: ["pid", "mount", "net", "uts", "ipc"])
    trees: list[str] = field(default_factory=list)   # "workspace"/"tmp": sent as open_tree() fds after the pipes
    deadline_seconds: float | None = None   # the sandbox kills itself this long after it starts, worker or not

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()


@dataclass
class Prepared:
    """What a spare builds before its task is known (the executor keeps spares per shape)."""

    cgroup_procs: list[str]      # for messages; the request carries them opened (a rename does not matter)
    namespaces: list[str]        # effective namespaces: the task's must be the same list
    rootfs: str = "host"
    shm_size_bytes: int = 64 << 20
    host_network: bool = False   # Full networking: the host's resolv.conf and hosts
    pivot_early: bool = False    # pivot before the task is known (its directories then come as open trees)


def effective_namespaces(namespaces: list[str], network: str) -> list[str]:
    """The namespaces a task gets: Full networking shares the host's network namespace."""
    return [name for name in NAMESPACE_FLAGS if name in namespaces and not (name == "net" and network == "full")]


def default_spec(host_network: bool) -> LaunchSpec:
    """The task a spare prepares for before its own is known."""
    return LaunchSpec(argv=[], env={}, cwd="/", workspace="/", network="full" if host_network else "none")
