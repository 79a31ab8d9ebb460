"""The ValidatingAdmissionPolicy that refuses a violating ExecutionTask at ``kubectl apply``. Pure.

``render()`` returns the policy and its binding (admissionregistration.k8s.io/v1, GA in Kubernetes 1.30).
The binding's ``paramRef`` selects every ExecutionPolicy (``parameterNotFoundAction: Allow``: no policy,
nothing to refuse), so the API server evaluates the CEL below once per ExecutionPolicy, with ``params`` the
policy, ``object`` the task as created (CRD defaults applied) and ``namespaceObject`` its namespace.
``python -m expbuild_isolation.kube.admission_policy`` writes the chart's copy
(``helm/expbuild-isolation/files/admission-policy.yaml``); a test fails when the two drift, and evaluates
these expressions against the same violating tasks the operator refuses.

The rules are ``api.judge``'s, with the same messages. The Kubernetes CEL libraries they use: the quantity
library (``quantity().isGreaterThan``), the IP and CIDR libraries (``isCIDR``, ``cidr().containsIP``,
``prefixLength``; 1.30) and the extended strings (``replace``, ``split``, ``substring``, ``indexOf``,
``join``); see https://kubernetes.io/docs/reference/using-api/cel/.

What CEL cannot check stays with the operator and the node agent: the quota of unfinished tasks (it needs
the other tasks), a policy the models refuse but the schema lets through, timeouts written in days or
other forms Go's ``duration()`` does not read, and image signatures: CEL has no ECDSA (nor base64 or JSON
decoding), so with ``images.verifySignature`` the admission policy refuses only an image not pinned by
digest and a task without the two signature annotations; whether the signature verifies, and for which
digest and repository, the operator and the agent decide (``api.signatures``).
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from ..api.policy import GO_DURATION_PATTERN, POLICY_KIND, POLICY_PLURAL
from ..api.signatures import NO_SIGNATURE, PAYLOAD_ANNOTATION, SIGNATURE_ANNOTATION, UNPINNED
from ..api.task import (
    API_VERSION,
    GROUP,
    PLURAL,
    VERSION,
    Isolation,
    IsolationLevel,
    Network,
)

NAME = "expbuild-isolation-executionpolicies"
O, P = "object.spec", "params.spec"
RANKS = "{" + ", ".join(f"'{level.value}': {level.rank}" for level in IsolationLevel) + "}"
# Message pieces, as api.judge words them: "<field>: '<value>' is not allowed by ExecutionPolicy <name> (<accepted>)".
PLAIN_BY = " is not allowed by ExecutionPolicy ' + params.metadata.name + ' ("
BY = "\\'" + PLAIN_BY  # after a quoted value
TRUSTED_BY = "\\' is not trusted by ExecutionPolicy ' + params.metadata.name + ' ("  # api.judge's UntrustedImage


def _has(path: str) -> str:
    """``has()`` of every step of ``params.spec.a.b``: absent anywhere means the knob is not set."""
    parts = path.split(".")
    return "(" + " && ".join(f"has({'.'.join(parts[:i])})" for i in range(3, len(parts) + 1)) + ")"


def _labels(check: str) -> str:
    return f"(has(namespaceObject.metadata.labels) && {check})"


SELECTED = " && ".join([
    f"(!{_has(P + '.namespaceSelector.matchLabels')} || {P}.namespaceSelector.matchLabels.all(k, "
    + _labels(f"k in namespaceObject.metadata.labels && namespaceObject.metadata.labels[k] == "
              f"{P}.namespaceSelector.matchLabels[k]") + "))",
    f"(!{_has(P + '.namespaceSelector.matchExpressions')} || {P}.namespaceSelector.matchExpressions.all(e, "
    f"e.operator == 'Exists' ? {_labels('e.key in namespaceObject.metadata.labels')} : "
    f"e.operator == 'DoesNotExist' ? !{_labels('e.key in namespaceObject.metadata.labels')} : "
    f"(e.operator == 'In') == "
    + _labels("e.key in namespaceObject.metadata.labels && has(e.values) && "
              "namespaceObject.metadata.labels[e.key] in e.values") + "))",
])


def _task(field: str, default: str) -> str:
    """A task field that may be absent with its parent (CRD defaults apply only inside present objects)."""
    parent = field.rpartition(".")[0]
    return f"has({O}.{parent}) && has({O}.{field}) ? {O}.{field} : {default}"


# The host of a spec.network.allow entry ("10.0.0.0/8:443", "[fd00::]/64:443", "[fd00::1]:80", "10.1.2.3").
HOST = ("(e.startsWith('[') ? e.substring(1, e.indexOf(']')) + (e.substring(e.indexOf(']') + 1).startsWith('/') "
        "? e.substring(e.indexOf(']') + 1).split(':')[0] : '') : e.split(':')[0])")
INSIDE = (f"{P}.network.restrictedCidrs.exists(c, (isCIDR({HOST}) && cidr(c).containsIP(cidr({HOST}).ip()) && "
          f"cidr({HOST}).prefixLength() >= cidr(c).prefixLength()) || (isIP({HOST}) && cidr(c).containsIP({HOST})))")

VARIABLES = {
    "selected": SELECTED,
    "rank": RANKS,
    "minimum": _task("isolation.minimum", f"'{Isolation().minimum.value}'"),
    "executor": _task("isolation.executor", f"'{Isolation().executor}'"),
    "runtimeClass": _task("isolation.runtimeClassName", "''"),
    "seccomp": _task("isolation.seccompProfile", f"'{Isolation().seccomp_profile}'"),
    "network": _task("network.policy", f"'{Network().policy.value}'"),
    "allow": _task("network.allow", "[]"),
    "image": f"has({O}.image) ? {O}.image : ''",
    "refuses": f"!({_has(P + '.isolation.belowMinimum')} && {P}.isolation.belowMinimum == 'Raise')",
    "badAllow": (f"variables.network == 'Restricted' && {_has(P + '.network.restrictedCidrs')} ? "
                 f"variables.allow.filter(e, !{INSIDE}) : []"),
    "goTimeout": f"{O}.timeout.matches('{GO_DURATION_PATTERN}')",
    "pinned": "variables.image.matches('@sha256:[0-9a-f]{64}$')",
    "verifies": f"variables.image != '' && {_has(P + '.images.verifySignature')} && {P}.images.verifySignature",
    "signed": " && ".join(["has(object.metadata.annotations)",
                           *(f"'{key}' in object.metadata.annotations"
                             for key in (SIGNATURE_ANNOTATION, PAYLOAD_ANNOTATION))]),
}


def _listed(field: str, value: str, allowed: str) -> dict[str, str]:
    return {"expression": f"!{_has(allowed)} || {value} in {allowed}",
            "messageExpression": f"'{field}: \\'' + {value} + '{BY}allowed: ' + {allowed}.join(', ') + ')'"}


def _cap(name: str) -> dict[str, str]:
    cap, asked = f"{P}.maxResources.{name}", f"{O}.resources.{name}"
    if name == "pids":
        over, shown = f"{asked} > {cap}", f"string({asked})"
    else:
        over = f"quantity(string({asked})).isGreaterThan(quantity(string({cap})))"
        shown = f"'\\'' + string({asked}) + '\\''"
    present = f"has({O}.resources) && has({asked})"
    return {"expression": f"!{_has(cap)} || ({present} && !({over}))",
            "messageExpression": f"'spec.resources.{name}: ' + ({present} ? {shown} : 'unset (no limit)') + "
                                 f"'{PLAIN_BY}' + ({present} ? 'at most ' : 'set a limit of at most ') + "
                                 f"string({cap}) + ')'"}


RULES: list[dict[str, str]] = [
    {"expression": f"!{_has(P + '.isolation.minimum')} || !variables.refuses || "
                   f"variables.rank[variables.minimum] >= variables.rank[{P}.isolation.minimum]",
     "messageExpression": f"'spec.isolation.minimum: \\'' + variables.minimum + '{BY}at least ' + "
                          f"{P}.isolation.minimum + ')'"},
    _listed("spec.isolation.executor", "variables.executor", f"{P}.isolation.executors"),
    {"expression": f"variables.runtimeClass == '' || !{_has(P + '.isolation.runtimeClasses')} || "
                   f"variables.runtimeClass in {P}.isolation.runtimeClasses",
     "messageExpression": f"'spec.isolation.runtimeClassName: \\'' + variables.runtimeClass + '{BY}allowed: ' + "
                          f"{P}.isolation.runtimeClasses.join(', ') + ')'"},
    _listed("spec.isolation.seccompProfile", "variables.seccomp", f"{P}.isolation.seccompProfiles"),
    {"expression": f"!({_has(P + '.isolation.minimum')} && !variables.refuses && variables.seccomp == 'Unconfined' && "
                   f"variables.rank[variables.minimum] < variables.rank[{P}.isolation.minimum])",
     "messageExpression": f"'spec.isolation.seccompProfile: \\'Unconfined{BY}Unconfined needs isolation.minimum "
                          f"None, and the policy raises the minimum to ' + {P}.isolation.minimum + ')'"},
    *(_cap(name) for name in ("cpu", "memory", "disk", "pids")),
    {"expression": f"!{_has(P + '.maxResources.timeout')} || !variables.goTimeout || "
                   f"duration({O}.timeout) <= duration({P}.maxResources.timeout)",
     "messageExpression": f"'spec.timeout: \\'' + {O}.timeout + '{BY}at most ' + {P}.maxResources.timeout + ')'"},
    _listed("spec.network.policy", "variables.network", f"{P}.network.policies"),
    {"expression": "size(variables.badAllow) == 0",
     "messageExpression": f"'spec.network.allow: \\'' + variables.badAllow[0] + '{BY}every entry must fall inside "
                          f"one of ' + {P}.network.restrictedCidrs.join(', ') + ')'"},
    {"expression": f"variables.image == '' || !{_has(P + '.images.allowed')} || {P}.images.allowed.exists(pattern, "
                   f"variables.image.matches('^' + pattern.replace('.', '\\\\.').replace('*', '.*') + '$'))",
     "messageExpression": f"'spec.image: \\'' + variables.image + '{BY}allowed: ' + "
                          f"{P}.images.allowed.join(', ') + ')'"},
    {"expression": f"variables.image == '' || !({_has(P + '.images.requireDigest')} && {P}.images.requireDigest) || "
                   f"variables.pinned",
     "messageExpression": f"'spec.image: \\'' + variables.image + '{BY}images must be pinned by digest: "
                          f"name@sha256:<64 hex digits>)'"},
    {"expression": "!variables.verifies || variables.pinned",
     "messageExpression": f"'spec.image: \\'' + variables.image + '{TRUSTED_BY}{UNPINNED})'"},
    {"expression": "!variables.verifies || !variables.pinned || variables.signed",
     "messageExpression": f"'spec.image: \\'' + variables.image + '{TRUSTED_BY}{NO_SIGNATURE})'"},
]


def render(name: str = NAME) -> list[dict[str, Any]]:
    """The ValidatingAdmissionPolicy and its binding."""
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "expbuild-isolation"}},
        "spec": {
            "failurePolicy": "Fail",
            "paramKind": {"apiVersion": API_VERSION, "kind": POLICY_KIND},
            "matchConstraints": {"resourceRules": [{"apiGroups": [GROUP], "apiVersions": [VERSION],
                                                    "operations": ["CREATE"], "resources": [PLURAL]}]},
            "variables": [{"name": key, "expression": value} for key, value in VARIABLES.items()],
            "validations": [{"expression": f"!variables.selected || ({rule['expression']})",
                             "messageExpression": rule["messageExpression"], "reason": "Forbidden"}
                            for rule in RULES],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "expbuild-isolation"}},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "paramRef": {"selector": {}, "parameterNotFoundAction": "Allow"}},
    }
    return [policy, binding]


def render_yaml() -> str:
    """The chart's copy: one document {policy, binding} (Helm reads one YAML document per file)."""
    policy, binding = render()
    header = ("# Generated from operator/expbuild_isolation/kube/admission_policy.py by "
              "`python -m expbuild_isolation.kube.admission_policy`. Do not edit.\n"
              f"# Checks every {POLICY_KIND} ({POLICY_PLURAL}.{GROUP}) when a task is created "
              "(templates/admission-policy.yaml renders it).\n")
    return header + yaml.safe_dump({"policy": policy, "binding": binding}, sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render_yaml())
