"""The ExecutionTask custom resource (expbuild.io/v1alpha1) as pydantic models.

These models are the single source of truth: the CRD in ``crds/`` is generated
from them (see ``api.crd``), local runs validate manifests with them, and the
operator reads objects from the API server through them. Field descriptions
become ``kubectl explain`` text. Rules that span fields exist twice, on purpose:
as CEL (``x-kubernetes-validations``) for the API server and as validators here
for local runs; ``tests/unit/test_crd.py`` checks that both reject the same
manifests.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from . import bounds
from .messages import shown
from .model import (
    FINISHED_PHASES,
    IsolationLevel,
    Model,
    NetworkMode,
    ObjectMeta,
    Phase,
)
from .quantities import (
    DURATION_PATTERN,
    QuantityError,
    parse_bytes,
    parse_cpu,
    parse_duration,
    parse_quantity,
)
from .status import Condition, ExecutionTaskStatus, LogTails, OutputRecord, TaskStats

GROUP = "expbuild.io"
VERSION = "v1alpha1"
KIND = "ExecutionTask"
PLURAL = "executiontasks"
API_VERSION = f"{GROUP}/{VERSION}"

NO_NUL = r"^[^\x00]*$"   # in the CRD; the models say it in words
# An image reference as Docker, Podman and the kubelet parse it: [registry[:port]/]path[:tag][@digest]; or empty.
_DOMAIN = r"[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*(:[0-9]+)?"
_PATH = r"[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*"
IMAGE_PATTERN = (rf"^$|^({_DOMAIN}/)?{_PATH}(/{_PATH})*(:[A-Za-z0-9_][-.A-Za-z0-9_]{{0,127}})?"
                 rf"(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{{32,}})?$")
PATH_RULES = [
    {"rule": "!self.startsWith('/')", "message": "must be a relative path inside the workspace"},
    {"rule": "!self.matches('(^|/)[.][.](/|$)')", "message": "must not contain '..'"},
]


def _no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError("contains a NUL byte, which a program's arguments and environment cannot carry")
    return value


Text = Annotated[str, AfterValidator(_no_nul), Field(json_schema_extra={"pattern": NO_NUL})]


Quantity = Annotated[str | int, Field(json_schema_extra=None)]


def workspace_path(value: str, *, field: str, allow_root: bool = False) -> str:
    """Normalize a path relative to the workspace, refusing anything that could leave it."""
    if not isinstance(value, str):
        raise ValueError(f"{field}: {shown(value)} is not a path")
    if value.startswith("/"):
        raise ValueError(f"{field}: {shown(value)} is absolute; paths are relative to the workspace "
                         f"(e.g. {shown(value.lstrip('/') or 'out')})")
    if re.search(r"(^|/)\.\.(/|$)", value):
        raise ValueError(f"{field}: {shown(value)} contains '..'; paths must stay inside the workspace")
    if "\0" in value:
        raise ValueError(f"{field}: {shown(value)} contains a NUL byte")
    normal = posixpath.normpath(value) if value else "."
    if normal == "." and not allow_root:
        raise ValueError(f"{field}: {shown(value)} names the workspace itself; name a file or directory in it")
    return normal



ExecutorName = Literal["auto", "job", "agent", "docker", "podman", "namespace", "host"]


class EnvVar(Model):
    name: str = Field(description="Variable name.", min_length=1, max_length=256,
                      pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: Text = Field("", description="Value; empty when omitted.", max_length=65536)


DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def object_name_problem(value: str) -> str | None:
    """Why ``value`` is not a Kubernetes object name (a DNS-1123 subdomain), or None when it is one."""
    if not value:
        return "is empty"
    if len(value) > 253:
        return "is longer than 253 characters"
    if not re.fullmatch(DNS_SUBDOMAIN_PATTERN, value):
        return ("is not a Kubernetes object name: lowercase letters, digits, '-' and '.', starting and ending "
                "with a letter or digit (no '/')")
    return None


class ConfigMapRef(Model):
    name: str = Field(description="Name of a ConfigMap in the task's namespace (locally: a ConfigMap "
                                  "YAML file next to the task, <name>.yaml).", min_length=1, max_length=253,
                      json_schema_extra={"pattern": DNS_SUBDOMAIN_PATTERN})

    @field_validator("name")
    @classmethod
    def _object_name(cls, value: str) -> str:
        problem = object_name_problem(value)
        if problem:
            raise ValueError(f"spec.inputs[].configMap.name: {value[:80]!r} {problem}")
        return value


# paths that name the workspace itself ("", ".", "./", "./."): fine for a ConfigMap's directory, not for a file
WORKSPACE_ITSELF = r"^([.](/+|$))*$"
CONTENT_NEEDS_A_NAME = "a content input needs a file name as its path, not the workspace itself"


class InputFile(Model):
    """A file (inline content) or a directory (every key of a ConfigMap) placed before start."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.content) != has(self.configMap)",
         "message": "each input needs exactly one of content or configMap"},
        {"rule": f"!has(self.content) || !self.path.matches('{WORKSPACE_ITSELF}')", "message": CONTENT_NEEDS_A_NAME}]})

    path: str = Field(description="Where in the workspace: a file for content, a directory for configMap.",
                      max_length=1024, json_schema_extra={"x-kubernetes-validations": PATH_RULES})
    content: str | None = Field(None, description="Inline file content (small files).", max_length=262144)
    config_map: ConfigMapRef | None = Field(None, description="Copy every key of this ConfigMap into path/.")
    executable: bool = Field(False, description="Mark the file executable (content only).")

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        return workspace_path(value, field="spec.inputs[].path", allow_root=True)

    @model_validator(mode="after")
    def _one_source(self) -> InputFile:
        if (self.content is None) == (self.config_map is None):
            raise ValueError(f"spec.inputs[{shown(self.path)}]: each input needs exactly one of content or configMap")
        if self.content is not None and self.path == ".":
            raise ValueError(f"spec.inputs[{shown(self.path)}].path: {CONTENT_NEEDS_A_NAME}")
        return self


class Outputs(Model):
    paths: list[Annotated[str, Field(max_length=1024, json_schema_extra={"x-kubernetes-validations": PATH_RULES})]] = Field(
        default_factory=list, max_length=256,
        description="Files to collect after exit, relative to the workspace; each reported with sha256 and size.")

    @field_validator("paths")
    @classmethod
    def _relative(cls, values: list[str]) -> list[str]:
        return [workspace_path(v, field="spec.outputs.paths[]") for v in values]


class Resources(Model):
    cpu: str | int | None = Field(None, description='CPU cores, as a Kubernetes quantity ("500m", "2").',
                                  json_schema_extra=bounds.quantity_schema('CPU cores, as a Kubernetes quantity ("500m", "2").',
                                                                     bounds.CPU))
    memory: str | int | None = Field(None, description='Memory limit, swap included ("512Mi", "2Gi").',
                                     json_schema_extra=bounds.quantity_schema('Memory limit, swap included ("512Mi", "2Gi").',
                                                                        bounds.MEMORY))
    disk: str | int | None = Field(None, description='Space for the workspace and /tmp ("1Gi").',
                                   json_schema_extra=bounds.quantity_schema('Space for the workspace and /tmp ("1Gi").',
                                                                      bounds.DISK))
    pids: int | None = Field(None, ge=1, le=bounds.MAX_PIDS,
                             description="Most processes and threads at once (stops fork bombs).")

    @field_validator("cpu", "memory", "disk")
    @classmethod
    def _within_bounds(cls, value: str | int | None, info: Any) -> str | int | None:
        if value is None:
            return value
        field = f"spec.resources.{info.field_name}"
        if isinstance(value, str) and len(value) > bounds.QUANTITY_MAX_LENGTH:
            raise ValueError(f"{field}: {shown(value)} is longer than {bounds.QUANTITY_MAX_LENGTH} characters")
        amount = _quantity(parse_quantity, value, field)
        bound = {"cpu": bounds.CPU, "memory": bounds.MEMORY, "disk": bounds.DISK}[info.field_name]
        if not bound.check(amount):
            raise bounds.out_of_range(field, shown(value), bound.message)
        return value

    @property
    def cpu_cores(self) -> float | None:
        return None if self.cpu is None else parse_cpu(self.cpu)

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory is None else parse_bytes(self.memory)

    @property
    def disk_bytes(self) -> int | None:
        return None if self.disk is None else parse_bytes(self.disk)


def _quantity(parse: Any, value: Any, field: str) -> Any:
    try:
        return parse(value)
    except QuantityError as exc:
        raise ValueError(f"{field}: {exc}") from None


ALLOW_ENTRY = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\](/[0-9]{1,3})?|[0-9.]+(/[0-9]{1,2})?|[A-Za-z0-9*]([-A-Za-z0-9.*]*[A-Za-z0-9])?)(:(?P<port>[0-9]{1,5}))?$")


class Network(Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.policy != 'Restricted' || (has(self.allow) && size(self.allow) > 0)",
         "message": "policy Restricted needs at least one allow entry (CIDR[:port])"},
        {"rule": "self.policy == 'Restricted' || !has(self.allow) || size(self.allow) == 0",
         "message": "allow is only used with policy Restricted"}]})

    policy: NetworkMode = Field(NetworkMode.NONE, description="None: no network. Localhost: loopback only. "
                                "Restricted: only the allow list. Full: unrestricted.")
    allow: list[Annotated[str, Field(max_length=270)]] = Field(
        default_factory=list, max_length=64,
        description='Restricted only: "CIDR[:port]" entries (e.g. "10.20.0.0/16:443"); hostnames where the cluster can enforce them.')

    @field_validator("allow")
    @classmethod
    def _entries(cls, values: list[str]) -> list[str]:
        for entry in values:
            match = ALLOW_ENTRY.match(entry)
            if not match or (match.group("port") and not 0 < int(match.group("port")) < 65536):
                raise ValueError(f"spec.network.allow: {shown(entry)} is not CIDR[:port] or hostname[:port] "
                                 f"(e.g. \"10.20.0.0/16:443\")")
        return values

    @model_validator(mode="after")
    def _allow_matches_policy(self) -> Network:
        if self.policy is NetworkMode.RESTRICTED and not self.allow:
            raise ValueError("spec.network: policy Restricted needs at least one allow entry (CIDR[:port])")
        if self.policy is not NetworkMode.RESTRICTED and self.allow:
            raise ValueError(f"spec.network.allow is only used with policy Restricted (policy is {self.policy.value})")
        return self


# Localhost/<path under the kubelet's seccomp root>: segments never start with '.', so no '..', no '.', no
# hidden files and no empty segment (the API server refuses a Pod whose localhostProfile contains '..').
LOCALHOST_PROFILE_PATTERN = r"Localhost/[-_a-zA-Z0-9][-_.a-zA-Z0-9]*(/[-_a-zA-Z0-9][-_.a-zA-Z0-9]*)*"
SECCOMP_PATTERN = rf"^(RuntimeDefault|expbuild-default|expbuild-strict|Unconfined|{LOCALHOST_PROFILE_PATTERN})$"


class Isolation(Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.seccompProfile != 'Unconfined' || self.minimum == 'None'",
         "message": "seccompProfile Unconfined needs isolation.minimum None"}]})

    minimum: IsolationLevel = Field(IsolationLevel.CONTAINER, description="The weakest isolation this task accepts "
                                    "(None < Process < Filesystem < Container < VM). Never silently lowered.")
    executor: ExecutorName = Field("auto", description="Which backend runs the task; auto picks the first that "
                                   "meets minimum and the limits.")
    runtime_class_name: str = Field("", max_length=253, description="Kubernetes RuntimeClass (e.g. gvisor, kata); "
                                    "counts as VM isolation.")
    seccomp_profile: str = Field("RuntimeDefault", max_length=512, json_schema_extra={"pattern": SECCOMP_PATTERN},
                                 description="RuntimeDefault, expbuild-default, expbuild-strict, Localhost/<file>, "
                                 "or Unconfined (needs minimum None).")
    read_only_root_filesystem: bool = Field(True, description="Mount the root filesystem read-only.")
    run_as_user: int = Field(65534, ge=0, le=2147483647, description="User id the command runs as (container "
                             "executors and Jobs).")

    @field_validator("seccomp_profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        if not re.fullmatch(SECCOMP_PATTERN, value):
            raise ValueError(f"spec.isolation.seccompProfile: {value[:80]!r} is not RuntimeDefault, expbuild-default, "
                             f"expbuild-strict, Unconfined or Localhost/<relative path> (path segments of letters, "
                             f"digits, '-', '_' and '.', none starting with '.')")
        return value

    @model_validator(mode="after")
    def _unconfined_needs_none(self) -> Isolation:
        if self.seccomp_profile == "Unconfined" and self.minimum is not IsolationLevel.NONE:
            raise ValueError(f"spec.isolation: seccompProfile Unconfined needs minimum None "
                             f"(minimum is {self.minimum.value})")
        return self


class ExecutionTaskSpec(Model):
    image: str = Field("", max_length=1024, description="Container image; ignored by the host and namespace "
                       "executors unless they unpack images.", json_schema_extra={"pattern": IMAGE_PATTERN})
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="When to pull the image (IfNotPresent keeps pre-loaded images working).")
    command: list[Annotated[Text, Field(max_length=131072)]] = Field(
        min_length=1, max_length=4096, description="argv; the first element is the program (REAPI Command.arguments).")
    env: list[EnvVar] = Field(default_factory=list, max_length=256, description="Environment; nothing of the "
                              "executor's environment leaks in except PATH and HOME defaults.")
    working_dir: str = Field("", max_length=1024, description="Directory the command starts in, relative to the "
                             "workspace (/workspace in containers).",
                             json_schema_extra={"x-kubernetes-validations": PATH_RULES})
    inputs: list[InputFile] = Field(default_factory=list, max_length=256, description="Files placed in the "
                                    "workspace before start.")
    outputs: Outputs = Field(default_factory=Outputs, description="Files collected after exit.")
    timeout: str = Field("10m", min_length=1, max_length=64, pattern=DURATION_PATTERN,
                         description='Hard wall-clock limit ("90s", "10m", "1h30m"; at most 7d); the task ends TimedOut '
                         'with exit 124.',
                         json_schema_extra={"x-kubernetes-validations": [
                             {"rule": bounds.timeout_cel_rule(), "message": bounds.TIMEOUT_MESSAGE}]})
    resources: Resources = Field(default_factory=Resources, description="Resource limits; requests equal limits.")
    network: Network = Field(default_factory=Network, description="What the command may reach over the network.")
    isolation: Isolation = Field(default_factory=Isolation, description="How strongly the task is kept from the host.")
    cancel: bool = Field(False, description="Set to true to stop the task; it ends Cancelled.")

    @field_validator("image")
    @classmethod
    def _image_reference(cls, value: str) -> str:
        if not re.fullmatch(IMAGE_PATTERN, value):
            raise ValueError(f"spec.image: {shown(value)} is not an image reference (e.g. \"localhost/busybox:latest\": "
                             f"a lowercase repository, then :tag and/or @sha256:digest)")
        return value

    @field_validator("working_dir")
    @classmethod
    def _working_dir(cls, value: str) -> str:
        return workspace_path(value, field="spec.workingDir", allow_root=True) if value else ""

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not 0 < value <= bounds.MAX_TIMEOUT_SECONDS:   # also nan and inf
                raise bounds.out_of_range("spec.timeout", shown(value), bounds.TIMEOUT_MESSAGE)
            value = f"{value}s" if float(value).is_integer() is False else f"{int(value)}s"
        if isinstance(value, str):
            if len(value) > 64:
                raise ValueError(f"spec.timeout: {shown(value)} is longer than 64 characters")
            bounds.check_timeout(value, "spec.timeout", shown(value))
        return value

    @field_validator("env")
    @classmethod
    def _unique_env(cls, values: list[EnvVar]) -> list[EnvVar]:
        seen: set[str] = set()
        for var in values:
            if var.name in seen:
                raise ValueError(f"spec.env: {shown(var.name)} is set twice")
            seen.add(var.name)
        return values

    @property
    def timeout_seconds(self) -> float:
        return parse_duration(self.timeout)


__all__ = ["FINISHED_PHASES", "Condition", "ExecutionTask", "ExecutionTaskSpec", "ExecutionTaskStatus",
           "IsolationLevel", "LogTails", "Model", "NetworkMode", "ObjectMeta", "OutputRecord", "Phase",
           "TaskStats"]


class ExecutionTask(Model):
    """An untrusted command to run hardened, and what happened when it ran."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["expbuild.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["ExecutionTask"] = KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ExecutionTaskSpec
    status: ExecutionTaskStatus = Field(default_factory=ExecutionTaskStatus)

    @property
    def key(self) -> str:
        """namespace/name, or just the name outside a cluster."""
        ns = self.metadata.namespace
        return f"{ns}/{self.metadata.name}" if ns else self.metadata.name
