"""Judge a task against the ExecutionPolicies of its namespace. Pure: no I/O, the same answer everywhere.

The operator, the node agent and ``expbuild-isolation run`` all call ``judge(task, policies, labels)``; the
admission policy at the API server checks the same rules in CEL (``kube/admission_policy.py``).

Several policies selecting one namespace combine to the strictest (``combine``): the highest floor, the
intersection of every allow-list, the lowest of every cap, digest pinning if any policy asks for it, the
smallest quota, and a signature by a publisher each verifying policy trusts. A task passes only if it passes
every policy, so each violation names the policy that refuses it. A policy that raises instead of refusing
(``belowMinimum: Raise``) does not refuse a task asking for less: it raises the task's floor
(``Judgement.floor``), and the highest raise wins. An image without a trusted signature is refused with its
own reason, UntrustedImage, when nothing else is wrong (``Judgement.reason``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from . import signatures
from .policy import BelowMinimum, ExecutionPolicy, image_pattern_regex
from .quantities import parse_bytes, parse_cpu, parse_duration
from .task import ALLOW_ENTRY, ExecutionTask, IsolationLevel, NetworkMode

T = TypeVar("T")
POLICY_VIOLATION = "PolicyViolation"
UNTRUSTED_IMAGE = "UntrustedImage"
DIGEST_SUFFIX = "@sha256:"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Violation:
    """One thing a policy refuses: the field, its value (as shown), the policy, and what it would accept."""

    field: str
    value: str
    policy: str
    accepted: str
    by: str = "ExecutionPolicy"  # what the policy is to a reader ("the worker config's" for a local [policy])
    reason: str = POLICY_VIOLATION  # UntrustedImage: the image is not signed by a publisher the policy trusts

    def __str__(self) -> str:
        verb = "trusted" if self.reason == UNTRUSTED_IMAGE else "allowed"
        return f"{self.field}: {self.value} is not {verb} by {self.by} {self.policy} ({self.accepted})"


@dataclass(frozen=True)
class Bound(Generic[T]):
    """A knob's strictest value and the policy it comes from (its text as the policy wrote it)."""

    value: T
    policy: str
    text: str = ""


@dataclass(frozen=True)
class Allowed:
    """One policy's allow-list for a knob."""

    values: tuple[str, ...]
    policy: str


@dataclass(frozen=True)
class Trusted:
    """One verifying policy's publishers: (name, PEM public key) each."""

    publishers: tuple[tuple[str, str], ...]
    policy: str


def _intersection(lists: Sequence[Allowed]) -> frozenset[str] | None:
    if not lists:
        return None
    common = set(lists[0].values)
    for allowed in lists[1:]:
        common &= set(allowed.values)
    return frozenset(common)


@dataclass(frozen=True)
class Strictest:
    """Several policies as one: what all of them together allow."""

    policies: tuple[str, ...] = ()
    refuse_below: Bound[IsolationLevel] | None = None
    raise_to: Bound[IsolationLevel] | None = None
    executors: tuple[Allowed, ...] = ()
    runtime_classes: tuple[Allowed, ...] = ()
    seccomp_profiles: tuple[Allowed, ...] = ()
    max_cpu: Bound[float] | None = None
    max_memory: Bound[int] | None = None
    max_disk: Bound[int] | None = None
    max_pids: Bound[int] | None = None
    max_timeout: Bound[float] | None = None
    network_policies: tuple[Allowed, ...] = ()
    restricted_cidrs: tuple[Allowed, ...] = ()
    images: tuple[Allowed, ...] = ()
    require_digest: Bound[bool] | None = None
    trusted: tuple[Trusted, ...] = ()  # every policy with verifySignature: a signer each of them trusts
    max_unfinished_tasks: Bound[int] | None = None

    @property
    def allowed_executors(self) -> frozenset[str] | None:
        return _intersection(self.executors)

    @property
    def allowed_runtime_classes(self) -> frozenset[str] | None:
        return _intersection(self.runtime_classes)

    @property
    def allowed_seccomp_profiles(self) -> frozenset[str] | None:
        return _intersection(self.seccomp_profiles)

    @property
    def allowed_network_policies(self) -> frozenset[str] | None:
        return _intersection(self.network_policies)

    @property
    def allowed_cidrs(self) -> list[Network] | None:
        """The CIDRs inside one of every policy's list (two CIDRs either nest or do not meet)."""
        if not self.restricted_cidrs:
            return None
        common = [ipaddress.ip_network(c, strict=False) for c in self.restricted_cidrs[0].values]
        for allowed in self.restricted_cidrs[1:]:
            other = [ipaddress.ip_network(c, strict=False) for c in allowed.values]
            common = [_smaller(a, b) for a in common for b in other if _overlap(a, b)]
        return sorted(set(common), key=lambda n: (n.version, n.network_address, n.prefixlen))


def _overlap(a: Network, b: Network) -> bool:
    return a.version == b.version and (a.subnet_of(b) or b.subnet_of(a))  # type: ignore[arg-type]


def _smaller(a: Network, b: Network) -> Network:
    return a if a.prefixlen >= b.prefixlen else b


def _lowest(current: Bound[T] | None, value: T | None, policy: str, text: str = "") -> Bound[T] | None:
    if value is None or (current is not None and not value < current.value):  # type: ignore[operator]
        return current
    return Bound(value, policy, text or str(value))


def _highest(current: Bound[T] | None, value: T | None, policy: str) -> Bound[T] | None:
    if value is None or (current is not None and not value > current.value):  # type: ignore[operator]
        return current
    return Bound(value, policy, getattr(value, "value", str(value)))


def combine(policies: Iterable[ExecutionPolicy]) -> Strictest:
    """The strictest combination of ``policies`` (all of them apply), each knob naming its policy."""
    out: dict[str, object] = {"policies": (), "executors": (), "runtime_classes": (), "seccomp_profiles": (),
                              "network_policies": (), "restricted_cidrs": (), "images": (), "trusted": ()}
    bounds: dict[str, Bound | None] = dict.fromkeys(  # type: ignore[type-arg]
        ["refuse_below", "raise_to", "max_cpu", "max_memory", "max_disk", "max_pids", "max_timeout",
         "require_digest", "max_unfinished_tasks"])
    for policy in policies:
        name, spec = policy.name, policy.spec
        out["policies"] = (*out["policies"], name)  # type: ignore[misc]
        floor = "refuse_below" if spec.isolation.below_minimum is BelowMinimum.REFUSE else "raise_to"
        bounds[floor] = _highest(bounds[floor], spec.isolation.minimum, name)
        for knob, values in (("executors", spec.isolation.executors),
                             ("runtime_classes", spec.isolation.runtime_classes),
                             ("seccomp_profiles", spec.isolation.seccomp_profiles),
                             ("network_policies", None if spec.network.policies is None
                              else [mode.value for mode in spec.network.policies]),
                             ("restricted_cidrs", spec.network.restricted_cidrs),
                             ("images", spec.images.allowed)):
            if values is not None:
                out[knob] = (*out[knob], Allowed(tuple(values), name))  # type: ignore[misc]
        caps = spec.max_resources
        for knob, parse, value in (("max_cpu", parse_cpu, caps.cpu), ("max_memory", parse_bytes, caps.memory),
                                   ("max_disk", parse_bytes, caps.disk), ("max_timeout", parse_duration, caps.timeout),
                                   ("max_pids", int, caps.pids),
                                   ("max_unfinished_tasks", int, spec.max_unfinished_tasks)):
            if value is not None:
                bounds[knob] = _lowest(bounds[knob], parse(value), name, str(value))
        if spec.images.verify_signature:
            keys = tuple((p.name, p.public_key) for p in spec.images.trusted_publishers or [])
            out["trusted"] = (*out["trusted"], Trusted(keys, name))  # type: ignore[misc]
        if spec.images.require_digest:
            bounds["require_digest"] = Bound(True, name if bounds["require_digest"] is None
                                             else bounds["require_digest"].policy)  # type: ignore[union-attr]
    return Strictest(**out, **bounds)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Judgement:
    """What the policies say about one task."""

    policies: tuple[str, ...] = ()                      # the policies that govern its namespace
    violations: tuple[Violation, ...] = ()
    floor: Bound[IsolationLevel] | None = None           # the raised isolation minimum, if a policy raised it
    quota: Bound[int] | None = None                      # most unfinished tasks in its namespace
    rules: Strictest = field(default_factory=Strictest)
    by: str = "ExecutionPolicy"  # what a policy is to a reader of the messages

    @property
    def allowed(self) -> bool:
        return not self.violations

    @property
    def reason(self) -> str:
        """UntrustedImage when an image's signature is all that is wrong, else PolicyViolation."""
        if self.violations and all(v.reason == UNTRUSTED_IMAGE for v in self.violations):
            return UNTRUSTED_IMAGE
        return POLICY_VIOLATION

    def refusal(self) -> str:
        """One message for status and Event: every violation, each naming its policy."""
        return "; ".join(str(v) for v in self.violations)

    def raised(self, asked: IsolationLevel) -> str:
        """The status message's note on a raised floor, or ""."""
        if self.floor is None:
            return ""
        return f"spec.isolation.minimum {asked.value} raised to {self.floor.value.value} by {self.by} {self.floor.policy}"


def selecting(policies: Iterable[ExecutionPolicy], namespace_labels: Mapping[str, str]) -> list[ExecutionPolicy]:
    """The policies whose namespaceSelector selects a namespace with ``namespace_labels``, by name."""
    labels = dict(namespace_labels)
    return sorted((p for p in policies if p.spec.namespace_selector.selects(labels)), key=lambda p: p.name)


def judge(task: ExecutionTask, policies: Iterable[ExecutionPolicy], namespace_labels: Mapping[str, str], *,
          bundle: signatures.Bundle | None = None, missing: str = signatures.NO_SIGNATURE) -> Judgement:
    """Every violation of ``task`` against the policies selecting its namespace, and the raised floor.

    ``bundle`` is the image's signature where the caller found one; else the task's annotations are read,
    and ``missing`` says where a signature was looked for when there is none.
    """
    rules = combine(selecting(policies, namespace_labels))
    violations = [*_isolation(task, rules), *_resources(task, rules), *_network(task, rules), *_images(task, rules),
                  *_signatures(task, rules, bundle, missing)]
    asked = task.spec.isolation.minimum
    floor = rules.raise_to if rules.raise_to is not None and asked < rules.raise_to.value else None
    if floor is not None and task.spec.isolation.seccomp_profile == "Unconfined":
        violations.append(Violation("spec.isolation.seccompProfile", "'Unconfined'", floor.policy,
                                    f"Unconfined needs isolation.minimum None, and the policy raises the minimum "
                                    f"to {floor.value.value}"))
    return Judgement(policies=rules.policies, violations=tuple(violations), floor=floor,
                     quota=rules.max_unfinished_tasks, rules=rules)


def _listed(value: str, lists: Sequence[Allowed], field_name: str) -> list[Violation]:
    return [Violation(field_name, repr(value), allowed.policy, f"allowed: {', '.join(allowed.values) or 'none'}")
            for allowed in lists if value not in allowed.values]


def _isolation(task: ExecutionTask, rules: Strictest) -> list[Violation]:
    isolation = task.spec.isolation
    found = []
    if rules.refuse_below is not None and isolation.minimum < rules.refuse_below.value:
        found.append(Violation("spec.isolation.minimum", repr(isolation.minimum.value), rules.refuse_below.policy,
                               f"at least {rules.refuse_below.value.value}"))
    found += _listed(isolation.executor, rules.executors, "spec.isolation.executor")
    if isolation.runtime_class_name:
        found += _listed(isolation.runtime_class_name, rules.runtime_classes, "spec.isolation.runtimeClassName")
    found += _listed(isolation.seccomp_profile, rules.seccomp_profiles, "spec.isolation.seccompProfile")
    return found


def _resources(task: ExecutionTask, rules: Strictest) -> list[Violation]:
    res = task.spec.resources
    found = []
    for name, asked, text, cap in (("cpu", res.cpu_cores, res.cpu, rules.max_cpu),
                                   ("memory", res.memory_bytes, res.memory, rules.max_memory),
                                   ("disk", res.disk_bytes, res.disk, rules.max_disk),
                                   ("pids", res.pids, res.pids, rules.max_pids)):
        if cap is None:
            continue
        if asked is None:
            found.append(Violation(f"spec.resources.{name}", "unset (no limit)", cap.policy,
                                   f"set a limit of at most {cap.text}"))
        elif asked > cap.value:
            found.append(Violation(f"spec.resources.{name}", repr(text), cap.policy, f"at most {cap.text}"))
    if rules.max_timeout is not None and task.spec.timeout_seconds > rules.max_timeout.value:
        found.append(Violation("spec.timeout", repr(task.spec.timeout), rules.max_timeout.policy,
                               f"at most {rules.max_timeout.text}"))
    return found


def allow_network(entry: str) -> Network | None:
    """The network of a ``spec.network.allow`` entry (CIDR[:port]), or None for a hostname."""
    match = ALLOW_ENTRY.match(entry)
    host = (match.group("host") if match else entry).replace("[", "").replace("]", "")
    try:
        return ipaddress.ip_network(host, strict=False)
    except ValueError:
        return None


def _network(task: ExecutionTask, rules: Strictest) -> list[Violation]:
    network = task.spec.network
    found = _listed(network.policy.value, rules.network_policies, "spec.network.policy")
    if network.policy is not NetworkMode.RESTRICTED:
        return found
    for allowed in rules.restricted_cidrs:
        cidrs = [ipaddress.ip_network(c, strict=False) for c in allowed.values]
        for entry in network.allow:
            net = allow_network(entry)
            if net is None or not any(net.version == c.version and net.subnet_of(c) for c in cidrs):  # type: ignore[arg-type]
                found.append(Violation("spec.network.allow", repr(entry), allowed.policy,
                                       f"every entry must fall inside one of {', '.join(allowed.values) or 'none'}"))
    return found


def pinned(image: str) -> bool:
    """Whether ``image`` names its content by digest (``name@sha256:<64 hex>``)."""
    _, sep, digest = image.rpartition(DIGEST_SUFFIX)
    return bool(sep) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


def _images(task: ExecutionTask, rules: Strictest) -> list[Violation]:
    image = task.spec.image
    if not image:
        return []  # nothing is pulled: the executor's own configured image or rootfs runs it
    found = [Violation("spec.image", repr(image), allowed.policy, f"allowed: {', '.join(allowed.values) or 'none'}")
             for allowed in rules.images
             if not any(image_pattern_regex(pattern).match(image) for pattern in allowed.values)]
    if rules.require_digest is not None and not pinned(image):
        found.append(Violation("spec.image", repr(image), rules.require_digest.policy,
                               "images must be pinned by digest: name@sha256:<64 hex digits>"))
    return found


def _signatures(task: ExecutionTask, rules: Strictest, bundle: signatures.Bundle | None,
                missing: str) -> list[Violation]:
    image = task.spec.image
    if not image or not rules.trusted:
        return []
    if bundle is None:
        bundle = signatures.from_annotations(task.metadata.annotations)
    found = []
    for trusted in rules.trusted:
        problem = signatures.distrust(image, bundle, trusted.publishers, missing)
        if problem is not None:
            found.append(Violation("spec.image", repr(image), trusted.policy, problem, reason=UNTRUSTED_IMAGE))
    return found
