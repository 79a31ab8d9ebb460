"""Pure builders for container executors: request + config -> the arguments of ``containers.create``.

Kept apart from the executor so that what a task gets (every hardening flag,
every limit) can be read and tested without a daemon. Hardened defaults a task
can only tighten: no network unless the worker allows it, read-only root, a
small noexec /tmp, no new privileges, no capabilities, our seccomp profile,
pids/memory/cpu limits, a private IPC namespace, never privileged.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass

from ...api.task import IsolationLevel, NetworkMode
from ..base import ExecutionRequest, ExecutorCapabilities, ResourceLimits
from ..config import DockerConfig
from .deadline import INIT_DIR, INIT_PROCESSES, init_command

WORKSPACE = "/workspace"
LABEL_TASK = "expbuild.io/task-id"
LABEL_WORKER = "expbuild.io/worker-id"
LABEL_OWNER = "expbuild.io/owner"        # host:pid of the executor that created it (the sweep spares live owners)
LABEL_POOL = "expbuild.io/pool-class"    # set on warm-pool containers
LABEL_DEADLINE = "expbuild.io/sweep-after"  # epoch seconds: past it any sweep removes the container (deadline.py)
VM_RUNTIMES = ("runsc", "kata", "kata-runtime", "kata-qemu", "kata-fc")
SECCOMP_NAMES = frozenset({"RuntimeDefault", "expbuild-default", "expbuild-strict", "Unconfined"})


def capabilities_for(config: DockerConfig) -> ExecutorCapabilities:
    """What a Docker-API engine with ``config`` really enforces."""
    networks = {NetworkMode.NONE, NetworkMode.LOCALHOST}  # "none" still has loopback
    if config.network_mode == "bridge":
        networks.add(NetworkMode.FULL)
    vm = (config.runtime or "").split("/")[-1] in VM_RUNTIMES
    return ExecutorCapabilities(
        isolation_level=IsolationLevel.VM if vm else IsolationLevel.CONTAINER,
        supports_cpu_limit=True, supports_memory_limit=True, supports_pids_limit=True,
        supports_disk_limit=False,  # a bind-mounted workspace cannot be size-limited by the engine
        network_policies=frozenset(networks), supports_readonly_rootfs=True,
        seccomp_profiles=SECCOMP_NAMES, uses_image=True)


def working_dir_in_container(request: ExecutionRequest) -> str:
    relative = posixpath.normpath(request.working_dir or ".")
    if relative.startswith("/") or relative == ".." or relative.startswith("../"):
        raise ValueError(f"working_dir: {request.working_dir!r} must be a path inside the workspace")
    return WORKSPACE if relative == "." else f"{WORKSPACE}/{relative}"


def seccomp_option(profile_name: str, *, as_file: str | None = None) -> str:
    """``seccomp=<inline JSON>`` (Docker) or ``seccomp=<file>`` (Podman); Unconfined only when asked for."""
    if profile_name == "Unconfined":
        return "seccomp=unconfined"
    if as_file is not None:
        return f"seccomp={as_file}"
    return "seccomp=" + json.dumps(engine_profile(profile_name), separators=(",", ":"))


def engine_profile(profile_name: str) -> dict:
    """Our OCI profile, as Docker and Podman take it."""
    from ..seccomp import oci_profile
    return oci_profile(profile_name)


@dataclass(frozen=True)
class Placement:
    """Where one container goes: its name, labels, cgroup parent, and the host dir seen as /workspace."""

    name: str
    labels: dict[str, str]
    cgroup_parent: str | None
    workspace_source: str


def limits_class(request: ExecutionRequest, limits: ResourceLimits, config: DockerConfig) -> tuple:
    """Everything fixed at create time except argv/env/workspace: equal classes can share warm containers."""
    return (request.image or config.image, limits.cpu_cores, limits.memory_bytes, limits.max_processes,
            limits.network.mode, request.seccomp_profile, request.read_only_root, request.run_as_user)


def create_kwargs(request: ExecutionRequest, limits: ResourceLimits, config: DockerConfig, placement: Placement,
                  *, seccomp: str, command: list[str] | None = None, extra_mounts: tuple = (),
                  workspace_propagation: str | None = None, engine: str = "docker",
                  init_dir: str | None = None) -> dict:
    """Keyword arguments for ``DockerClient.containers.create``; ``command`` replaces argv (warm pool).

    ``init_dir``: the host directory holding our init (``deadline.py``), which then runs the task (or
    ``command``) as PID 1, with stdin open until the worker's attached connection goes; None: no own end.
    """
    from docker.types import LogConfig, Mount

    if command is not None:
        argv = list(command)
    elif init_dir is not None:
        argv = init_command(request.timeout_seconds, request.argv)
    else:
        argv = list(request.argv)
    if init_dir is not None:
        extra_mounts = (Mount(target=INIT_DIR, source=init_dir, type="bind", read_only=True), *extra_mounts)
    network = "bridge" if limits.network.mode == NetworkMode.FULL and config.network_mode == "bridge" else "none"
    security = [opt for opt in config.security_opts if not opt.startswith("seccomp")]
    if "no-new-privileges" not in [opt.replace(":true", "").replace("=true", "") for opt in security]:
        security.append("no-new-privileges")
    security.append(seccomp)
    kwargs: dict = dict(
        image=request.image or config.image,
        entrypoint=argv[:1], command=argv[1:],
        environment=dict(request.env),
        working_dir=working_dir_in_container(request),
        name=placement.name, labels=placement.labels, hostname="sandbox",
        network_mode=network,
        read_only=config.readonly_rootfs or request.read_only_root,
        security_opt=security, cap_drop=["ALL"], privileged=False, ipc_mode="private",
        mounts=[Mount(target=WORKSPACE, source=placement.workspace_source, type="bind", read_only=False,
                      propagation=workspace_propagation), *extra_mounts],
        # With the init: stdin open, closed by the engine when the one attached client goes (StdinOnce, which
        # the SDK sets for stdin_open without detach); our init is PID 1 even where the daemon adds its own.
        stdin_open=init_dir is not None, tty=False, detach=init_dir is None,
        log_config=LogConfig(type="json-file", config={"max-size": str(4 * request.log_limit_bytes + 65536),
                                                         "max-file": "2"}),
    )
    if config.mount_tmpfs:
        kwargs["tmpfs"] = {"/tmp": f"rw,noexec,nosuid,nodev,size={config.tmp_size_bytes},mode=1777"}
    if request.run_as_user is not None:
        kwargs["user"] = f"{request.run_as_user}:{request.run_as_user}"
    if limits.memory_bytes is not None:
        kwargs["mem_limit"] = limits.memory_bytes
        kwargs["memswap_limit"] = limits.memory_bytes  # swap equal to memory: no swap on top
    if limits.cpu_cores is not None:
        kwargs["nano_cpus"] = int(limits.cpu_cores * 1e9)
    if init_dir is not None:
        kwargs["init"] = False
    if limits.max_processes is not None:   # the init's own processes come on top: the task keeps its limit
        kwargs["pids_limit"] = limits.max_processes + (INIT_PROCESSES if init_dir is not None else 0)
    if placement.cgroup_parent:
        kwargs["cgroup_parent"] = placement.cgroup_parent
    if config.runtime:
        kwargs["runtime"] = config.runtime
    return kwargs
