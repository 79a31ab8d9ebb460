"""REAPI Action + Command -> the ExecutionRequest every executor takes (pure; tested directly).

Platform properties a build may set (e.g. Bazel's ``exec_properties`` or
``--remote_default_exec_properties``), all optional:

=================  ============================================  ===========================
property           meaning                                       example
=================  ============================================  ===========================
container-image    image for container executors                 docker://localhost/img:1
isolation          floor: None Process Filesystem Container VM   Container
executor           auto host namespace docker podman             namespace
network            none localhost full                           none
cpu / memory       limits, Kubernetes quantities                 2 / 512Mi
disk / pids        workspace size, process count                 1Gi / 256
seccomp            RuntimeDefault expbuild-strict ...            expbuild-strict
=================  ============================================  ===========================

OSFamily and ISA are scheduling keys for the server and are ignored here;
other unknown keys are ignored too (a server may pass its own). A value we
cannot parse fails the action with INVALID_ARGUMENT and names the property.
The worker's isolation floor always wins over a lower ``isolation``.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ...api import bounds
from ...api.messages import shown
from ...api.quantities import QuantityError, parse_bytes, parse_cpu, parse_quantity
from ...api.task import IsolationLevel, NetworkMode
from ...executors.base import DEFAULT_OUTPUT_LIMIT, ExecutionRequest, NetworkPolicy, ResourceLimits
from .protos import re_pb2

EXECUTORS = ("auto", "host", "namespace", "docker", "podman")
_NETWORKS = {"none": NetworkMode.NONE, "off": NetworkMode.NONE, "localhost": NetworkMode.LOCALHOST,
             "full": NetworkMode.FULL, "host": NetworkMode.FULL, "standalone": NetworkMode.NONE}
_IGNORED = {"OSFamily", "ISA"}


class InvalidAction(Exception):
    """The action cannot be run as sent; the message names the field or platform property."""


@dataclass(frozen=True)
class ActionPlan:
    """What to run and how: the request plus the executor choice and the outputs to collect."""

    request: ExecutionRequest
    executor: str                      # "auto" or one backend
    output_files: tuple[str, ...]      # relative to the workspace
    output_directories: tuple[str, ...]
    output_paths: tuple[str, ...]      # REAPI v2.1 output_paths (file, directory or symlink), workspace-relative
    output_prefix: str                 # the working directory: reported paths are relative to it
    properties: Mapping[str, str] = field(default_factory=dict)   # the platform properties, as sent
    raised: str = ""                   # why the isolation minimum is above what the action asked (policy.py)


def plan_action(action: re_pb2.Action, command: re_pb2.Command, workspace: Path, *, task_id: str,
                floor: IsolationLevel, default_timeout: float = 600.0, max_timeout: float = 3600.0,
                run_as_user: int | None = 65534, max_output_bytes: int = DEFAULT_OUTPUT_LIMIT) -> ActionPlan:
    """Map one REAPI action to a request; raises InvalidAction naming what is wrong."""
    if not command.arguments:
        raise InvalidAction("Command.arguments is empty")
    _no_nul(command)
    working_dir = _relative(command.working_directory, "Command.working_directory", allow_root=True)
    properties = _properties(command, action)
    limits, image, executor, minimum, seccomp = _options(properties, floor)

    def under_workdir(path: str, field: str) -> str:
        return posixpath.normpath(posixpath.join(working_dir, _relative(path, field, allow_root=True)))

    if command.output_paths:
        outputs = tuple(under_workdir(p, "Command.output_paths") for p in command.output_paths)
        files, dirs = (), ()
    else:
        outputs = ()
        files = tuple(under_workdir(p, "Command.output_files") for p in command.output_files)
        dirs = tuple(under_workdir(p, "Command.output_directories") for p in command.output_directories)
    timeout = action.timeout.ToTimedelta().total_seconds() if action.HasField("timeout") else default_timeout
    if timeout <= 0:
        timeout = default_timeout
    request = ExecutionRequest(
        task_id=task_id, argv=tuple(command.arguments), workspace=workspace,
        env={v.name: v.value for v in command.environment_variables},
        working_dir="" if working_dir == "." else working_dir,
        output_paths=tuple(p for p in (outputs or files + dirs) if p != "."),
        limits=limits, timeout_seconds=min(timeout, max_timeout), image=image, minimum_isolation=minimum,
        seccomp_profile=seccomp, read_only_root=True, run_as_user=run_as_user, output_limit_bytes=max_output_bytes)
    return ActionPlan(request=request, executor=executor, output_files=files, output_directories=dirs,
                      output_paths=outputs, output_prefix="" if working_dir == "." else working_dir,
                      properties=properties)


def _properties(command: re_pb2.Command, action: re_pb2.Action) -> dict[str, str]:
    """Action.platform (v2.2) overrides Command.platform; repeated names keep the last value."""
    merged = {p.name: p.value for p in command.platform.properties}
    merged.update({p.name: p.value for p in action.platform.properties})
    return merged


def _options(properties: dict[str, str], floor: IsolationLevel):  # type: ignore[no-untyped-def]
    def parsed(name: str, parse):  # type: ignore[no-untyped-def]
        if name not in properties or properties[name] == "":
            return None
        try:
            return parse(properties[name])
        except (QuantityError, ValueError) as exc:
            raise InvalidAction(f"platform property {name}={shown(properties[name])}: {exc}") from None

    network_name = (properties.get("network") or properties.get("dockerNetwork") or "none").lower()
    if network_name not in _NETWORKS:
        raise InvalidAction(f"platform property network={network_name!r}: expected one of none, localhost, full")
    limits = ResourceLimits(cpu_cores=parsed("cpu", _bounded(bounds.CPU, parse_cpu)),
                            memory_bytes=parsed("memory", _bounded(bounds.MEMORY, parse_bytes)),
                            disk_bytes=parsed("disk", _bounded(bounds.DISK, parse_bytes)),
                            max_processes=parsed("pids", _positive_int),
                            network=NetworkPolicy(_NETWORKS[network_name]))
    executor = properties.get("executor", "auto") or "auto"
    if executor not in EXECUTORS:
        raise InvalidAction(f"platform property executor={executor!r}: expected one of {', '.join(EXECUTORS)}")
    wanted = parsed("isolation", IsolationLevel) or floor
    minimum = wanted if wanted.rank >= floor.rank else floor   # never below the worker's floor
    image = properties.get("container-image", "")
    image = re.sub(r"^docker://", "", image)
    seccomp = properties.get("seccomp") or "RuntimeDefault"
    if seccomp == "Unconfined" and minimum.rank > IsolationLevel.NONE.rank:
        raise InvalidAction("platform property seccomp='Unconfined' needs isolation None, "
                            f"but this action's floor is {minimum.value}")
    return limits, image, executor, minimum, seccomp


def _no_nul(command: re_pb2.Command) -> None:
    """A NUL cannot be passed to a program; refused here rather than as a traceback from an executor."""
    for index, argument in enumerate(command.arguments):
        if "\0" in argument:
            raise InvalidAction(f"Command.arguments[{index}]: contains a NUL byte")
    for variable in command.environment_variables:
        if "\0" in variable.name or "\0" in variable.value or "=" in variable.name or not variable.name:
            raise InvalidAction(f"Command.environment_variables: {shown(variable.name)} is not a valid name=value "
                                f"(no NUL byte, no '=' in the name)")


def _bounded(bound: bounds.QuantityBound, parse):  # type: ignore[no-untyped-def]
    """A platform property parser that also applies the API's bound (the same message as for a task)."""
    def parse_within(text: str):  # type: ignore[no-untyped-def]
        if len(text) > 64 or not bound.check(parse_quantity(text)):
            raise ValueError(bound.message)
        return parse(text)
    return parse_within


def _positive_int(value: str) -> int:
    number = int(value) if len(value) <= 8 else 0
    if not 0 < number <= bounds.MAX_PIDS:
        raise ValueError(f"must be a whole number from 1 to {bounds.MAX_PIDS}")
    return number


def _relative(path: str, field: str, *, allow_root: bool = False) -> str:
    if path.startswith("/"):
        raise InvalidAction(f"{field}: {path!r} is absolute; REAPI paths are relative to the input root")
    normal = posixpath.normpath(path) if path else "."
    if normal == ".." or normal.startswith("../"):
        raise InvalidAction(f"{field}: {path!r} leaves the input root")
    if normal == "." and not allow_root:
        raise InvalidAction(f"{field}: {path!r} names the input root itself")
    return normal


def lease_task_id(lease_id: str) -> str:
    """A name usable in cgroup and container names: lowercase letters, digits and dashes."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", lease_id.lower()).strip("-")
    return ("reapi-" + cleaned)[:60].rstrip("-") or "reapi-action"
