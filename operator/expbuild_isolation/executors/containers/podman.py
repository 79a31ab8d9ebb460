"""Run tasks through Podman's Docker-compatible API (seed section 5.2).

The same lifecycle and hardening as ``DockerExecutor``; what differs is the
engine's dialect: Podman reads ``seccomp=`` as a file path (not inline JSON),
never reports ``OOMKilled`` (the base class reads OOM kills from the task's
parent cgroup, see ``cgroup.py``), and can map users through a user
namespace (``userns``), in which case the task's uid is not a host uid and the
workspace is opened to every uid instead of chowned.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..base import ExecutionRequest, ResourceLimits
from ..config import PodmanConfig
from .docker import DockerExecutor
from .spec import Placement, engine_profile

SECCOMP_DIR = Path("/run/expbuild/seccomp")


class PodmanExecutor(DockerExecutor):
    name = "podman"
    default_socket = "unix:///run/podman/podman.sock"
    cgroup_top = "expbuild-podman"

    def __init__(self, config: PodmanConfig | None = None) -> None:
        self.config: PodmanConfig = config or PodmanConfig()
        if self.config.rootless or os.geteuid() != 0:
            self.default_socket = f"unix:///run/user/{os.getuid()}/podman/podman.sock"
        super().__init__(self.config)
        if self.pool is not None and self.config.rootless:
            self.pool.enabled = False  # the pool mounts workspaces on the host: root only

    def seccomp(self, profile: str) -> str:
        if profile == "Unconfined":
            return "seccomp=unconfined"
        text = json.dumps(engine_profile(profile), separators=(",", ":"), sort_keys=True)
        path = SECCOMP_DIR / f"{profile}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
        if not path.exists():
            SECCOMP_DIR.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(text)
            partial.chmod(0o644)
            partial.replace(path)
        return f"seccomp={path}"

    def create_arguments(self, request: ExecutionRequest, limits: ResourceLimits, placement: Placement,
                         **extra) -> dict:  # type: ignore[no-untyped-def]
        kwargs = super().create_arguments(request, limits, placement, **extra)
        if self.config.userns:
            kwargs["userns_mode"] = self.config.userns
        return kwargs

    def _maps_users(self) -> bool:
        return bool(self.config.rootless or self.config.userns not in ("", "host"))

    def host_uid(self, uid: int | None) -> int | None:
        return None if self._maps_users() else uid

    def prepare_workspace(self, request: ExecutionRequest) -> None:
        super().prepare_workspace(request)
        if self._maps_users() and request.run_as_user is not None:
            # The task's uid maps to an unknown host uid: let every uid write (the parent stays private).
            for root, dirs, _ in os.walk(request.workspace):
                os.chmod(root, 0o777)
                for entry in dirs:
                    os.chmod(os.path.join(root, entry), 0o777)


__all__ = ["PodmanExecutor"]
