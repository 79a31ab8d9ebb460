"""The ExecutionPolicy custom resource (expbuild.io/v1alpha1, cluster-scoped): an administrator's floors and caps.

An ExecutionPolicy selects namespaces by label and says what tasks there may ask for: the lowest
``isolation.minimum`` (and whether a task asking less is raised to it or refused), which executors,
RuntimeClasses and seccomp profiles, how much cpu, memory, disk, pids and time, which network policies and
which CIDRs a Restricted task may reach, which images (whether they must be pinned by digest, and whose
signatures they must carry), and how many unfinished tasks a namespace may have at once. An absent knob
allows anything; an empty list allows nothing.

These models are the single source of the CRD (``api.crd.build_policy_crd``) and of the worker file's
``[policy]`` section. Judging a task against policies is ``api.judge``; this module only describes them.
"""

from __future__ import annotations

import ipaddress
import re
from enum import Enum
from typing import Annotated, Any, Literal

from pathlib import Path

from pydantic import ConfigDict, Field, field_validator, model_validator

from .bounds import QUANTITY_PATTERN
from .quantities import QuantityError, parse_bytes, parse_cpu, parse_duration
from .signatures import UnusableKey, public_key
from .task import (
    API_VERSION,
    GROUP,
    SECCOMP_PATTERN,
    VERSION,
    ExecutorName,
    IsolationLevel,
    Model,
    NetworkMode,
    ObjectMeta,
)

POLICY_KIND = "ExecutionPolicy"
POLICY_PLURAL = "executionpolicies"

# Image patterns: '*' matches any run of characters, nothing else is special. The characters are those of
# image references, so a pattern turns into the same regular expression here and in the admission policy's
# CEL (where '.' is the only one that needs escaping).
IMAGE_PATTERN = r"^[-a-zA-Z0-9._/:@*]+$"
# Go durations, so that the admission policy's CEL can read them with duration().
GO_DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"
CIDR_PATTERN = r"^([0-9]{1,3}[.]){3}[0-9]{1,3}/[0-9]{1,2}$|^[0-9a-fA-F:]*:[0-9a-fA-F:.]*/[0-9]{1,3}$"
PUBLISHER_NAME_PATTERN = r"^[-a-zA-Z0-9._@/]+$"
PEM_PATTERN = r"^\s*-----BEGIN PUBLIC KEY-----"
LABEL_KEY_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"


def _quantity(description: str) -> Any:
    """An int-or-string Kubernetes quantity, schema'd the way the API server accepts as structural."""
    schema = {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True,
              "pattern": QUANTITY_PATTERN, "description": description}
    return Field(None, description=description, json_schema_extra=schema)


class BelowMinimum(str, Enum):
    """What happens to a task whose ``isolation.minimum`` is below the policy's."""

    RAISE = "Raise"    # it runs at the policy's minimum; its status message says so
    REFUSE = "Refuse"  # it ends Error/PolicyViolation


class SelectorOperator(str, Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelRequirement(Model):
    key: str = Field(max_length=317, pattern=LABEL_KEY_PATTERN, description="Label key.")
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[Annotated[str, Field(max_length=63)]] = Field(
        default_factory=list, max_length=256, description="In and NotIn: the values; empty otherwise.")


class NamespaceSelector(Model):
    """Which namespaces a policy governs, by their labels; empty selects every namespace."""

    match_labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, description="Labels a namespace must carry, with these values.")
    match_expressions: list[LabelRequirement] = Field(
        default_factory=list, max_length=64, description="Label requirements a namespace must meet (all of them).")

    def selects(self, labels: dict[str, str]) -> bool:
        """Kubernetes LabelSelector semantics: every matchLabels pair and every requirement hold."""
        if any(labels.get(key) != value for key, value in self.match_labels.items()):
            return False
        for requirement in self.match_expressions:
            present, value = requirement.key in labels, labels.get(requirement.key)
            held = {SelectorOperator.IN: present and value in requirement.values,
                    SelectorOperator.NOT_IN: not (present and value in requirement.values),
                    SelectorOperator.EXISTS: present,
                    SelectorOperator.DOES_NOT_EXIST: not present}[requirement.operator]
            if not held:
                return False
        return True


class IsolationRules(Model):
    minimum: IsolationLevel | None = Field(None, description="The lowest spec.isolation.minimum a task may ask "
                                           "for (None < Process < Filesystem < Container < VM).")
    below_minimum: BelowMinimum = Field(BelowMinimum.REFUSE, description="A task asking for less than minimum: "
                                        "Raise (it runs at minimum; its status says so) or Refuse (Error/"
                                        "PolicyViolation).")
    executors: list[ExecutorName] | None = Field(None, max_length=16, description="Allowed "
                                                 "spec.isolation.executor values (list auto to let tasks leave "
                                                 "the choice to the operator); absent: any.")
    runtime_classes: list[Annotated[str, Field(max_length=253)]] | None = Field(
        None, max_length=64, description="Allowed spec.isolation.runtimeClassName values; a task naming none is "
                                         "not affected. Absent: any.")
    seccomp_profiles: list[Annotated[str, Field(max_length=512, pattern=SECCOMP_PATTERN)]] | None = Field(
        None, max_length=64, description="Allowed spec.isolation.seccompProfile values; absent: any.")


class ResourceCaps(Model):
    """The most a single task may ask for. A task that sets no limit where a cap exists is refused: no limit is
    more than any cap."""

    cpu: str | int | None = _quantity('Most CPU cores per task ("4", "500m").')
    memory: str | int | None = _quantity('Most memory per task ("8Gi").')
    disk: str | int | None = _quantity('Most disk per task ("10Gi").')
    pids: int | None = Field(None, ge=1, le=4194304, description="Most processes per task.")
    timeout: str | None = Field(None, max_length=64, pattern=GO_DURATION_PATTERN,
                                description='Longest spec.timeout ("1h", "90m").')

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: str | int | None) -> str | int | None:
        return _checked(parse_cpu, value, "maxResources.cpu")

    @field_validator("memory", "disk")
    @classmethod
    def _bytes(cls, value: str | int | None, info: Any) -> str | int | None:
        return _checked(parse_bytes, value, f"maxResources.{info.field_name}")

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str | None) -> str | None:
        return _checked(parse_duration, value, "maxResources.timeout")


def _checked(parse: Any, value: Any, field: str) -> Any:
    if value is None:
        return None
    try:
        parse(value)
    except QuantityError as exc:
        raise ValueError(f"{field}: {exc}") from None
    return value


class NetworkRules(Model):
    policies: list[NetworkMode] | None = Field(None, max_length=4, description="Allowed spec.network.policy "
                                               "values; absent: any.")
    restricted_cidrs: list[Annotated[str, Field(max_length=64, pattern=CIDR_PATTERN)]] | None = Field(
        None, max_length=64, description="For policy Restricted: every spec.network.allow entry must fall inside "
                                         "one of these CIDRs (hostnames are then refused). Absent: any.")

    @field_validator("restricted_cidrs")
    @classmethod
    def _cidrs(cls, values: list[str] | None) -> list[str] | None:
        for value in values or []:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"network.restrictedCidrs: {value[:64]!r} is not a CIDR (e.g. \"10.20.0.0/16\")") \
                    from None
        return values


class TrustedPublisher(Model):
    """Someone whose image signatures an administrator trusts: a name for messages and their public key."""

    name: str = Field(min_length=1, max_length=253, pattern=PUBLISHER_NAME_PATTERN,
                      description="Who signs (named in refusals), e.g. ci-release.")
    public_key: str = Field(max_length=4096, pattern=PEM_PATTERN, description="Their cosign public key "
                            "(cosign.pub: PEM, ECDSA P-256).")

    @field_validator("public_key")
    @classmethod
    def _usable(cls, value: str) -> str:
        try:
            public_key(value)
        except UnusableKey as exc:
            raise ValueError(f"publicKey: {exc}") from None
        return value


VERIFY_NEEDS_PUBLISHERS = "verifySignature needs at least one trustedPublishers entry (name and publicKey)"
PUBLISHERS_NEED_VERIFY = "trustedPublishers are used only with verifySignature: true"


class ImageRules(Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "!self.verifySignature || (has(self.trustedPublishers) && size(self.trustedPublishers) > 0)",
         "message": VERIFY_NEEDS_PUBLISHERS},
        {"rule": "!has(self.trustedPublishers) || self.verifySignature", "message": PUBLISHERS_NEED_VERIFY}]})

    allowed: list[Annotated[str, Field(max_length=1024, pattern=IMAGE_PATTERN)]] | None = Field(
        None, max_length=256, description="Patterns a task's spec.image must match ('*' matches anything, e.g. "
                                          "registry.local/ci/*); a task without an image is not affected. Absent: "
                                          "any.")
    require_digest: bool = Field(False, description="Images must be pinned by digest (name@sha256:<64 hex>).")
    verify_signature: bool = Field(False, description="Images must be pinned by digest and signed (cosign, with "
                                   "a key) by one of trustedPublishers; the task carries the signature in its "
                                   "annotations expbuild.io/image-signature and expbuild.io/image-signature-payload "
                                   "(base64). Otherwise the task ends Error/UntrustedImage.")
    trusted_publishers: list[TrustedPublisher] | None = Field(
        None, max_length=32, description="Whose signatures verifySignature accepts.")

    @model_validator(mode="after")
    def _verification(self) -> ImageRules:
        if self.verify_signature and not self.trusted_publishers:
            raise ValueError(f"images: {VERIFY_NEEDS_PUBLISHERS}")
        if self.trusted_publishers is not None and not self.verify_signature:
            raise ValueError(f"images: {PUBLISHERS_NEED_VERIFY}")
        return self


class LocalImageRules(ImageRules):
    """The worker file's ``[policy.images]``: an ExecutionPolicy's image rules and where signatures are kept."""

    signatures: Path | None = Field(None, description="A directory of signatures beside the images: "
                                    "sha256-<hex>.sig (base64) and sha256-<hex>.payload.json per image digest, "
                                    "as cosign sign-blob and cosign generate write them.")

    def as_rules(self) -> ImageRules:
        return ImageRules.model_validate(self.model_dump(exclude={"signatures"}))


class ExecutionPolicySpec(Model):
    namespace_selector: NamespaceSelector = Field(default_factory=NamespaceSelector, description="The namespaces "
                                                  "this policy governs; empty: every namespace.")
    isolation: IsolationRules = Field(default_factory=IsolationRules, description="Isolation floor, executors, "
                                      "RuntimeClasses and seccomp profiles.")
    max_resources: ResourceCaps = Field(default_factory=ResourceCaps, description="The most one task may ask for.")
    network: NetworkRules = Field(default_factory=NetworkRules, description="Network policies and reachable CIDRs.")
    images: ImageRules = Field(default_factory=ImageRules, description="Which images, whether pinned, and whose "
                             "signatures they must carry.")
    max_unfinished_tasks: int | None = Field(None, ge=1, le=100000, description="Most unfinished tasks per "
                                             "namespace; more wait in phase Pending (reason QuotaExceeded) and "
                                             "start in creation order as others finish.")


class LocalPolicy(Model):
    """The worker file's ``[policy]``: the knobs of an ExecutionPolicy that mean something on one machine.

    No namespace selector (it governs every task the worker runs) and no quota (``run`` runs one task).
    Keys are snake_case there (``below_minimum``, ``max_resources``, ``restricted_cidrs``, ``require_digest``).
    """

    isolation: IsolationRules = Field(default_factory=IsolationRules)
    max_resources: ResourceCaps = Field(default_factory=ResourceCaps)
    network: NetworkRules = Field(default_factory=NetworkRules)
    images: LocalImageRules = Field(default_factory=LocalImageRules)

    def as_policy(self, name: str) -> ExecutionPolicy:
        spec = ExecutionPolicySpec(isolation=self.isolation, max_resources=self.max_resources, network=self.network,
                                   images=self.images.as_rules())
        return ExecutionPolicy(metadata=ObjectMeta(name=name), spec=spec)


class ExecutionPolicy(Model):
    """An administrator's floors and caps for the tasks of the namespaces it selects."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["expbuild.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["ExecutionPolicy"] = POLICY_KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ExecutionPolicySpec = Field(default_factory=ExecutionPolicySpec)

    @property
    def name(self) -> str:
        return self.metadata.name


def image_pattern_regex(pattern: str) -> re.Pattern[str]:
    """The regular expression of an image pattern (the admission policy's CEL builds the same one)."""
    return re.compile("^" + re.escape(pattern).replace(r"\*", ".*") + "$")


__all__ = [
    "GROUP",
    "IMAGE_PATTERN",
    "POLICY_KIND",
    "POLICY_PLURAL",
    "VERSION",
    "BelowMinimum",
    "ExecutionPolicy",
    "ExecutionPolicySpec",
    "ImageRules",
    "IsolationRules",
    "LocalImageRules",
    "NamespaceSelector",
    "NetworkRules",
    "ResourceCaps",
    "TrustedPublisher",
    "image_pattern_regex",
]
