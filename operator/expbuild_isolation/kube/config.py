"""Operator settings, read once from the environment.

Variables (all optional):

``EXPBUILD_NAMESPACES``
    Comma-separated namespaces to watch; empty means cluster-wide.
``EXPBUILD_ALLOWED_IMAGES``
    Comma-separated fnmatch patterns an image must match (default ``*``),
    e.g. ``registry.local/*,localhost/busybox:*``.
``EXPBUILD_VM_RUNTIME_CLASS``
    RuntimeClass used when a task asks for isolation minimum VM without naming
    one (e.g. ``kata``); empty means the cluster offers no VM level.
``EXPBUILD_VM_RUNTIME_CLASSES``
    Comma-separated RuntimeClasses that really are VM-level runtimes (gVisor,
    Kata); a task naming one of these, or ``EXPBUILD_VM_RUNTIME_CLASS``, gets
    isolation VM. Any other RuntimeClass (a GPU runtime, say) counts as
    Container, and minimum VM is refused with it.
``EXPBUILD_DEFAULT_SECCOMP``
    Profile for tasks that leave ``isolation.seccompProfile`` at its default
    (``RuntimeDefault``); e.g. ``expbuild-default``.
``EXPBUILD_SECCOMP_DIR``
    Directory of the project's profiles relative to the kubelet's seccomp root
    (default ``profiles``): ``expbuild-strict`` becomes ``Localhost
    profiles/expbuild-strict.json``.
``EXPBUILD_LOG_TAIL_BYTES``
    Bytes of log kept in status.logs (default 4096).
``EXPBUILD_JOB_TTL_SECONDS``
    ttlSecondsAfterFinished of each Job (default 3600).
``EXPBUILD_SUPERVISOR_IMAGE``
    Image holding a static busybox that is copied into each task pod (default
    ``ghcr.io/expbuild/expbuild-isolation:<version>``, the operator's own image as
    ``image/build.sh`` tags it and the Helm chart sets it).
``EXPBUILD_SUPERVISOR_BINARY``
    Path of that busybox inside the supervisor image (default ``/bin/busybox``).
``EXPBUILD_FQDN_POLICIES``
    ``true`` when the cluster's network plugin enforces hostnames in egress
    rules; otherwise hostnames in ``network.allow`` are refused.
``EXPBUILD_IMAGE_PULL_GRACE_SECONDS``
    How long an image pull may fail before the task ends in Error (default 120).
``EXPBUILD_RESYNC_SECONDS``
    How often unfinished tasks are re-checked besides watch events (default 30).
``EXPBUILD_METRICS_PORT``
    Port of the Prometheus /metrics server (default 8080, 0 disables it).
``EXPBUILD_AGENT_NAMESPACE``
    Namespace of the node agents' Leases: the operator's own (default: the
    ``POD_NAMESPACE`` variable of its pod, else ``expbuild-system``).
``EXPBUILD_AGENT_CHECK_SECONDS``
    How often tasks placed on agents are checked for a lost agent (default 10).
``EXPBUILD_HARD_DISK_LIMITS``
    ``true``: treat ``spec.resources.disk`` as a hard limit, which only a node
    agent can enforce (a Job's emptyDir sizeLimit only evicts afterwards), so
    ``auto`` tasks with a disk limit go to agents.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from .. import __version__

DEFAULT_SUPERVISOR_IMAGE = f"ghcr.io/expbuild/expbuild-isolation:{__version__}"


class OperatorConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    namespaces: list[str] = Field(default_factory=list)
    allowed_images: list[str] = Field(default_factory=lambda: ["*"])
    vm_runtime_class: str = ""
    vm_runtime_classes: list[str] = Field(default_factory=list)
    default_seccomp: str = "RuntimeDefault"
    seccomp_dir: str = "profiles"
    log_tail_bytes: int = Field(4096, ge=0, le=1 << 20)
    job_ttl_seconds: int = Field(3600, ge=0)
    supervisor_image: str = DEFAULT_SUPERVISOR_IMAGE
    supervisor_binary: str = "/bin/busybox"
    fqdn_policies: bool = False
    image_pull_grace_seconds: float = Field(120.0, ge=0)
    resync_seconds: float = Field(30.0, gt=0)
    metrics_port: int = Field(8080, ge=0, le=65535)
    agent_namespace: str = "expbuild-system"
    agent_check_seconds: float = Field(10.0, gt=0)
    hard_disk_limits: bool = False

    @property
    def trusted_vm_runtime_classes(self) -> frozenset[str]:
        """The RuntimeClasses that count as isolation VM."""
        return frozenset(filter(None, [self.vm_runtime_class, *self.vm_runtime_classes]))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        lists = {"EXPBUILD_NAMESPACES": "namespaces", "EXPBUILD_ALLOWED_IMAGES": "allowed_images",
                 "EXPBUILD_VM_RUNTIME_CLASSES": "vm_runtime_classes"}
        for var, field in lists.items():
            if var in env:
                values[field] = [item.strip() for item in env[var].split(",") if item.strip()]
        scalars = {"EXPBUILD_VM_RUNTIME_CLASS": "vm_runtime_class", "EXPBUILD_DEFAULT_SECCOMP": "default_seccomp",
                   "EXPBUILD_SECCOMP_DIR": "seccomp_dir", "EXPBUILD_LOG_TAIL_BYTES": "log_tail_bytes",
                   "EXPBUILD_JOB_TTL_SECONDS": "job_ttl_seconds", "EXPBUILD_SUPERVISOR_IMAGE": "supervisor_image",
                   "EXPBUILD_SUPERVISOR_BINARY": "supervisor_binary",
                   "EXPBUILD_IMAGE_PULL_GRACE_SECONDS": "image_pull_grace_seconds",
                   "EXPBUILD_RESYNC_SECONDS": "resync_seconds", "EXPBUILD_METRICS_PORT": "metrics_port",
                   "EXPBUILD_AGENT_CHECK_SECONDS": "agent_check_seconds"}
        if env.get("POD_NAMESPACE", "").strip():
            values["agent_namespace"] = env["POD_NAMESPACE"].strip()
        if env.get("EXPBUILD_AGENT_NAMESPACE", "").strip():
            values["agent_namespace"] = env["EXPBUILD_AGENT_NAMESPACE"].strip()
        for var, field in scalars.items():
            if env.get(var, "").strip():
                values[field] = env[var].strip()
        if "EXPBUILD_HARD_DISK_LIMITS" in env:
            values["hard_disk_limits"] = env["EXPBUILD_HARD_DISK_LIMITS"].strip().lower() in {"1", "true", "yes", "on"}
        if "EXPBUILD_FQDN_POLICIES" in env:
            values["fqdn_policies"] = env["EXPBUILD_FQDN_POLICIES"].strip().lower() in {"1", "true", "yes", "on"}
        return cls.model_validate(values)
