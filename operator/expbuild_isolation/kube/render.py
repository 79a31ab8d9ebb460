"""ExecutionTask -> the Kubernetes objects that run it: inputs ConfigMap, NetworkPolicies, Job.

Pure functions returning plain dicts; ``controller`` sends them. The pod passes
the Pod Security Standards *restricted* profile (see ``restricted``) unless the
task asks for seccomp Unconfined, which the API only admits with isolation
minimum None; such pods are annotated ``expbuild.io/pod-security: privileged``.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

from ..api.task import ExecutionTask, IsolationLevel
from . import network, supervisor
from .config import OperatorConfig
from .errors import ImageNotAllowed, IsolationUnavailable, RenderError
from .names import TASK_NAME_ANNOTATION, metadata_for, object_name

POD_SECURITY_ANNOTATION = "expbuild.io/pod-security"
TASK_CONTAINER = "task"
TERMINATION_GRACE_SECONDS = 5  # SIGTERM at the deadline, SIGKILL this much later (the default 30 s is too long)
PREPARE_CONTAINER = "prepare"
JOB_EXECUTORS = frozenset({"auto", "job"})
CONFIG_MAP_LIMIT = 900 * 1024  # the API server's 1 MiB object limit, with room for metadata
DEFAULT_SCRATCH = "1Gi"


def check_task(task: ExecutionTask, config: OperatorConfig) -> None:
    """Refuse what only the operator can see: executor, image allow-list, isolation floor, root."""
    spec = task.spec
    if spec.isolation.executor not in JOB_EXECUTORS:
        raise RenderError(f"spec.isolation.executor: {spec.isolation.executor!r} is not served by the "
                          f"operator's Job path (use auto or job)", reason="ExecutorUnavailable")
    if not spec.image:
        raise RenderError("spec.image: required for tasks run as Kubernetes Jobs", reason="InvalidTask")
    if not any(fnmatch.fnmatchcase(spec.image, pattern) for pattern in config.allowed_images):
        raise ImageNotAllowed(f"spec.image: {spec.image!r} is not allowed in this cluster "
                              f"(allowed: {', '.join(config.allowed_images) or 'nothing'})")
    if spec.isolation.minimum is IsolationLevel.VM and not runtime_class(task, config):
        raise IsolationUnavailable("spec.isolation.minimum: VM needs a RuntimeClass, and neither "
                                   "spec.isolation.runtimeClassName nor the operator (EXPBUILD_VM_RUNTIME_CLASS) "
                                   "names one")
    if spec.isolation.minimum is IsolationLevel.VM and isolation_level(task, config) is not IsolationLevel.VM:
        trusted = ", ".join(sorted(config.trusted_vm_runtime_classes)) or "none"
        raise IsolationUnavailable(f"spec.isolation.runtimeClassName: {runtime_class(task, config)!r} is not a "
                                   f"RuntimeClass this cluster counts as VM isolation (EXPBUILD_VM_RUNTIME_CLASSES: "
                                   f"{trusted})")
    if spec.isolation.run_as_user == 0:
        raise RenderError("spec.isolation.runAsUser: 0 (root) is refused: the Pod Security Standards restricted "
                          "profile forbids root; use a non-root uid such as 65534", reason="InvalidTask")
    if inline_bytes(task) > CONFIG_MAP_LIMIT:
        raise RenderError(f"spec.inputs: {inline_bytes(task)} bytes of inline content exceed the "
                          f"{CONFIG_MAP_LIMIT} bytes a ConfigMap can carry; put large inputs in ConfigMaps "
                          f"of their own", reason="InvalidTask")


def runtime_class(task: ExecutionTask, config: OperatorConfig) -> str:
    """The RuntimeClass the pod gets: the task's own, or the operator's VM class for minimum VM."""
    if task.spec.isolation.runtime_class_name:
        return task.spec.isolation.runtime_class_name
    return config.vm_runtime_class if task.spec.isolation.minimum is IsolationLevel.VM else ""


def isolation_level(task: ExecutionTask, config: OperatorConfig) -> IsolationLevel:
    """VM only for a RuntimeClass the operator is configured to trust as one; any other class is Container."""
    return vm_level(runtime_class(task, config), config.trusted_vm_runtime_classes)


def vm_level(runtime_class_name: str | None, trusted: frozenset[str]) -> IsolationLevel:
    return IsolationLevel.VM if runtime_class_name and runtime_class_name in trusted else IsolationLevel.CONTAINER


def seccomp_profile(task: ExecutionTask, config: OperatorConfig) -> dict[str, str]:
    """The pod's seccompProfile; the operator's default applies where the task left the field unset."""
    isolation = task.spec.isolation
    name = isolation.seccomp_profile
    if "seccomp_profile" not in isolation.model_fields_set:
        name = config.default_seccomp
    if name == "RuntimeDefault":
        return {"type": "RuntimeDefault"}
    if name == "Unconfined":
        return {"type": "Unconfined"}
    if name.startswith("Localhost/"):
        return {"type": "Localhost", "localhostProfile": name[len("Localhost/"):]}
    return {"type": "Localhost", "localhostProfile": f"{config.seccomp_dir.rstrip('/')}/{name}.json"}


def inline_bytes(task: ExecutionTask) -> int:
    return sum(len(item.content.encode()) for item in task.spec.inputs if item.content is not None)


def render_inputs_config_map(task: ExecutionTask) -> dict[str, Any] | None:
    """The owned ConfigMap holding inline inputs (key ``input-<i>`` for spec.inputs[i]), if any."""
    data = {f"input-{i}": item.content for i, item in enumerate(task.spec.inputs) if item.content is not None}
    if not data:
        return None
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata_for(task, object_name(task.metadata.name, "-inputs")),
            "immutable": True, "data": data}


def _resources(task: ExecutionTask) -> dict[str, Any]:
    res = task.spec.resources
    amounts = {"cpu": res.cpu, "memory": res.memory, "ephemeral-storage": res.disk}
    limits = {key: str(value) for key, value in amounts.items() if value is not None}
    return {"requests": dict(limits), "limits": limits} if limits else {}


def _security_context(task: ExecutionTask, config: OperatorConfig) -> dict[str, Any]:
    isolation = task.spec.isolation
    return {"runAsNonRoot": True, "runAsUser": isolation.run_as_user, "runAsGroup": isolation.run_as_user,
            "allowPrivilegeEscalation": False, "privileged": False, "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": isolation.read_only_root_filesystem,
            "seccompProfile": seccomp_profile(task, config)}


def _input_volumes(task: ExecutionTask) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[list[str]]]:
    """Volumes, init-container mounts and prepare steps that place spec.inputs into the workspace."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    copies: list[list[str]] = []
    if any(item.content is not None for item in task.spec.inputs):
        volumes.append({"name": "inputs-inline", "configMap": {"name": object_name(task.metadata.name, "-inputs")}})
        mounts.append({"name": "inputs-inline", "mountPath": "/expbuild-inputs/inline", "readOnly": True})
    for i, item in enumerate(task.spec.inputs):
        if item.content is not None:
            mode = "0755" if item.executable else "0644"
            copies.append(["file", f"/expbuild-inputs/inline/input-{i}", item.path, mode])
        elif item.config_map is not None:
            volumes.append({"name": f"inputs-{i}", "configMap": {"name": item.config_map.name}})
            mounts.append({"name": f"inputs-{i}", "mountPath": f"/expbuild-inputs/cm-{i}", "readOnly": True})
            copies.append(["dir", f"/expbuild-inputs/cm-{i}", item.path])
    return volumes, mounts, copies


def render_pod_spec(task: ExecutionTask, config: OperatorConfig) -> dict[str, Any]:
    spec = task.spec
    scratch = str(spec.resources.disk) if spec.resources.disk is not None else DEFAULT_SCRATCH
    security = _security_context(task, config)
    workspace_mount = {"name": "workspace", "mountPath": supervisor.WORKSPACE}
    tools_mount = {"name": "tools", "mountPath": supervisor.TOOLS_DIR}
    input_volumes, input_mounts, copies = _input_volumes(task)
    env = {"HOME": supervisor.WORKSPACE, "TMPDIR": "/tmp"} | {var.name: var.value for var in spec.env}
    working_dir = f"{supervisor.WORKSPACE}/{spec.working_dir}" if spec.working_dir else supervisor.WORKSPACE
    prepare = {
        "name": PREPARE_CONTAINER, "image": config.supervisor_image, "imagePullPolicy": "IfNotPresent",
        "command": supervisor.prepare_command(config.supervisor_binary, copies, working_dir=spec.working_dir),
        "securityContext": security | {"readOnlyRootFilesystem": True},
        "resources": _resources(task), "volumeMounts": [workspace_mount, tools_mount, *input_mounts],
    }
    main = {
        "name": TASK_CONTAINER, "image": spec.image, "imagePullPolicy": spec.image_pull_policy,
        "command": supervisor.supervised_command(spec.command, spec.outputs.paths),
        "workingDir": working_dir, "env": [{"name": k, "value": v} for k, v in env.items()],
        "securityContext": security, "resources": _resources(task),
        "terminationMessagePath": supervisor.TERMINATION_LOG, "terminationMessagePolicy": "File",
        # The tools (the supervisor's busybox, which digests the outputs) are read-only for the task.
        "volumeMounts": [workspace_mount, tools_mount | {"readOnly": True}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never", "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "automountServiceAccountToken": False, "enableServiceLinks": False,
        "hostNetwork": False, "hostPID": False, "hostIPC": False, "shareProcessNamespace": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": spec.isolation.run_as_user,
                            "runAsGroup": spec.isolation.run_as_user, "fsGroup": spec.isolation.run_as_user,
                            "seccompProfile": seccomp_profile(task, config)},
        "initContainers": [prepare], "containers": [main],
        "volumes": [
            {"name": "workspace", "emptyDir": {"medium": "Memory", "sizeLimit": scratch}},
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": scratch}},
            {"name": "tools", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
            *input_volumes,
        ],
    }
    if runtime_class(task, config):
        pod["runtimeClassName"] = runtime_class(task, config)
    return pod


def render_job(task: ExecutionTask, config: OperatorConfig) -> dict[str, Any]:
    meta = metadata_for(task, object_name(task.metadata.name))
    level = "privileged" if seccomp_profile(task, config)["type"] == "Unconfined" else "restricted"
    template_meta = {"labels": network.pod_labels(task),
                     "annotations": {TASK_NAME_ANNOTATION: task.metadata.name, POD_SECURITY_ANNOTATION: level}}
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
        "spec": {
            "backoffLimit": 0, "completions": 1, "parallelism": 1,
            "activeDeadlineSeconds": max(1, math.ceil(task.spec.timeout_seconds)),
            "ttlSecondsAfterFinished": config.job_ttl_seconds,
            "template": {"metadata": template_meta, "spec": render_pod_spec(task, config)},
        },
    }


def objects_for(task: ExecutionTask, config: OperatorConfig) -> list[dict[str, Any]]:
    """Everything the task needs, in creation order (policy before the pod it fences)."""
    check_task(task, config)
    objects = [render_inputs_config_map(task), *network.render_network_policies(task, config), render_job(task, config)]
    return [obj for obj in objects if obj is not None]
