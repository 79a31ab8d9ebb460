"""Configuration of each backend, in the TOML shapes of the seed design (section 5).

Each backend reads only its own section; ``worker/config.py`` assembles them
into the worker file. Unknown keys are errors so that a typo never silently
weakens a sandbox.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..api.task import NetworkMode
from .base import NetworkPolicy, ResourceLimits


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LimitsConfig(Section):
    """``default_limits``: applied where the task sets nothing."""

    cpu_cores: float | None = Field(None, gt=0)
    memory_bytes: int | None = Field(None, gt=0)
    disk_bytes: int | None = Field(None, gt=0)
    max_processes: int | None = Field(None, gt=0)
    network: Literal["none", "localhost", "full"] = "none"

    def to_limits(self) -> ResourceLimits:
        mode = {"none": NetworkMode.NONE, "localhost": NetworkMode.LOCALHOST, "full": NetworkMode.FULL}[self.network]
        return ResourceLimits(cpu_cores=self.cpu_cores, memory_bytes=self.memory_bytes, disk_bytes=self.disk_bytes,
                              network=NetworkPolicy(mode), max_processes=self.max_processes)


class HostConfig(Section):
    """seed 5.4: run on the host, in its own session, with an environment allow-list."""

    env_whitelist: list[str] = Field(default_factory=lambda: ["PATH", "HOME", "USER", "LANG", "TZ"])
    cleanup_workspace: bool = True
    default_limits: LimitsConfig = Field(default_factory=LimitsConfig)


class NamespaceConfig(Section):
    """seed 5.3: Linux namespaces + cgroups + seccomp, rootfs from the host or a directory.

    Turning off the pid, uts or ipc namespace lowers the isolation level the executor reports to
    Filesystem; turning off the network namespace leaves only network Full. The mount namespace cannot be
    turned off, and the user-namespace mode does not exist: asking for either is an error.
    """

    use_pid_namespace: bool = True
    use_mount_namespace: bool = True
    use_network_namespace: bool = True
    use_uts_namespace: bool = True
    use_ipc_namespace: bool = True
    use_user_namespace: bool | Literal["auto"] = "auto"   # "auto": only where it would be needed (not root)
    cgroup_parent: str | None = None      # e.g. "expbuild"; a relative name under each hierarchy's root
    rootfs: str = "host"                  # "host" (read-only binds of /usr, /bin, /lib*, /etc essentials) or a dir
    tmp_size_bytes: int = Field(64 << 20, gt=0)
    workspace_tmpfs: bool = False         # put the workspace on a size-limited tmpfs (hard disk limit)
    default_limits: LimitsConfig = Field(default_factory=lambda: LimitsConfig(max_processes=1024))

    @field_validator("use_mount_namespace")
    @classmethod
    def _mount_namespace_is_required(cls, value: bool) -> bool:
        if not value:
            raise ValueError("the sandbox cannot work without its mount namespace (its own root, /workspace, "
                             "/proc); accepted: true")
        return value

    @field_validator("use_user_namespace")
    @classmethod
    def _no_user_namespace_mode(cls, value: bool | str) -> bool | str:
        if value is True:
            raise ValueError("the user-namespace mode is not implemented (the executor runs as root and creates "
                             "no user namespace); accepted: false or \"auto\"")
        return value


class DockerConfig(Section):
    """seed 5.1: the Docker Engine through the docker SDK; hardened defaults a task can only tighten."""

    image: str = "localhost/expbuild-busybox:latest"
    always_pull: bool = False
    network_mode: Literal["none", "bridge"] = "none"
    readonly_rootfs: bool = True
    mount_tmpfs: bool = True
    tmp_size_bytes: int = Field(64 << 20, gt=0)
    security_opts: list[str] = Field(default_factory=lambda: ["no-new-privileges"])
    runtime: str | None = None            # e.g. "runsc" (gVisor): isolation level VM
    socket_path: str | None = None
    worker_id: str | None = None          # label on every container; the startup sweep removes ours
    pool_size: int = Field(0, ge=0)       # warm containers per (image, limits class)
    default_limits: LimitsConfig = Field(default_factory=lambda: LimitsConfig(max_processes=1024))

    @field_validator("security_opts")
    @classmethod
    def _never_weaker(cls, values: list[str]) -> list[str]:
        for opt in values:
            if opt.replace(" ", "") in ("seccomp=unconfined", "apparmor=unconfined", "label=disable"):
                raise ValueError(f"security_opts: {opt!r} would weaken every task; set seccompProfile "
                                 f"Unconfined on the task instead (it needs isolation.minimum None)")
        return values


class PodmanConfig(DockerConfig):
    """seed 5.2: the same through Podman's Docker-compatible socket, plus Podman's own options."""

    rootless: bool = False
    userns: Literal["auto", "keep-id", "nomap", "host", ""] = ""
