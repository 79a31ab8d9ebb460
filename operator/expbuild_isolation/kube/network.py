"""spec.network -> the NetworkPolicies that fence a task's pod.

None and Localhost: deny all ingress and egress (loopback never leaves the pod),
through one policy per namespace, ``expbuild-isolation-deny-all``, selecting the
pods labelled ``expbuild.io/network: isolated``: the common case costs the API
server no write per task. The operator makes sure it exists, as rendered here,
before it creates the first such Job in a namespace, and puts it back at once
if it is deleted or changed (``controller``).
Restricted: a policy of the task's own that selects only its pod: egress only to
the allowed CIDRs (TCP on the given port, every port when none is given); ingress denied. Hostnames need a network plugin that
enforces them: with ``EXPBUILD_FQDN_POLICIES=true`` they go into a Cilium
``toFQDNs`` policy beside the standard one (plus DNS egress to kube-dns, which
only then is needed); otherwise they are refused. Full: no policy at all.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ..api.task import ALLOW_ENTRY, ExecutionTask, NetworkMode
from .config import OperatorConfig
from .errors import RenderError
from .names import MANAGED_BY, labels_for, metadata_for, object_name

DNS_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]


def parse_allow(entry: str) -> tuple[str, int | None, bool]:
    """``"10.0.0.0/8:443"`` -> (normalized CIDR or hostname, port, is_hostname)."""
    match = ALLOW_ENTRY.match(entry)
    if not match:
        raise RenderError(f"spec.network.allow: {entry!r} is not CIDR[:port] or hostname[:port]", reason="InvalidTask")
    host, port = match.group("host"), match.group("port")
    port_number = int(port) if port else None
    try:
        network = ipaddress.ip_network(host.strip("[]").replace("]/", "/"), strict=False)
    except ValueError:
        return host.lower(), port_number, True
    return str(network), port_number, False


def _peer_rule(cidr: str, port: int | None) -> dict[str, Any]:
    rule: dict[str, Any] = {"to": [{"ipBlock": {"cidr": cidr}}]}
    if port is not None:
        rule["ports"] = [{"protocol": "TCP", "port": port}]
    return rule


ISOLATED_LABEL = "expbuild.io/network"
ISOLATED = "isolated"
SHARED_POLICY_NAME = "expbuild-isolation-deny-all"
SHARED_POLICY_LABEL = "expbuild.io/shared-policy"


def isolated(task: ExecutionTask) -> bool:
    """Whether the task's pod is fenced by the namespace's shared deny-all policy (None and Localhost)."""
    return task.spec.network.policy in (NetworkMode.NONE, NetworkMode.LOCALHOST)


def pod_labels(task: ExecutionTask) -> dict[str, str]:
    """The task pod's labels: the task's, and the one the shared deny-all policy selects by."""
    return labels_for(task) | ({ISOLATED_LABEL: ISOLATED} if isolated(task) else {})


def render_shared_policy(namespace: str) -> dict[str, Any]:
    """The namespace's deny-all NetworkPolicy for every isolated task pod (no owner: it outlives each task)."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": SHARED_POLICY_NAME, "namespace": namespace,
                         "labels": {SHARED_POLICY_LABEL: "deny-all", **MANAGED_BY}},
            "spec": {"podSelector": {"matchLabels": {ISOLATED_LABEL: ISOLATED, **MANAGED_BY}},
                     "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}}


def shared_policy_intact(policy: dict[str, Any]) -> bool:
    """Whether a stored shared policy still fences what ``render_shared_policy`` fences, and nothing less.

    Compared by meaning: the API server leaves empty rule lists out of what it returns.
    """
    spec, wanted = policy.get("spec") or {}, render_shared_policy("")["spec"]
    return (spec.get("podSelector") == wanted["podSelector"]
            and sorted(spec.get("policyTypes") or []) == sorted(wanted["policyTypes"])
            and not spec.get("ingress") and not spec.get("egress"))


def render_network_policies(task: ExecutionTask, config: OperatorConfig) -> list[dict[str, Any]]:
    """The task's own policies: for Restricted, its NetworkPolicy (and, for hostnames, a Cilium policy).

    None and Localhost have none of their own (``render_shared_policy`` fences them), Full none at all.
    """
    net = task.spec.network
    if net.policy is not NetworkMode.RESTRICTED:
        return []
    selector = {"matchLabels": labels_for(task)}
    policy: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata_for(task, object_name(task.metadata.name)),
        "spec": {"podSelector": selector, "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []},
    }
    entries = [parse_allow(entry) for entry in net.allow]
    hostnames = [(host, port) for host, port, is_name in entries if is_name]
    if hostnames and not config.fqdn_policies:
        names = ", ".join(repr(entry) for entry, (_, _, is_name) in zip(net.allow, entries) if is_name)
        raise RenderError(f"spec.network.allow: {names} name hosts, but this cluster's NetworkPolicies match only "
                          f"IP blocks; use CIDRs (e.g. \"10.20.0.0/16:443\"), or set EXPBUILD_FQDN_POLICIES=true "
                          f"where the network plugin (Cilium) enforces hostnames", reason="NetworkPolicyUnavailable")
    policy["spec"]["egress"] = [_peer_rule(cidr, port) for cidr, port, is_name in entries if not is_name]
    if not hostnames:
        return [policy]
    policy["spec"]["egress"].append({"to": [DNS_PEER], "ports": DNS_PORTS})
    return [policy, _cilium_fqdn_policy(task, hostnames)]


def _cilium_fqdn_policy(task: ExecutionTask, hostnames: list[tuple[str, int | None]]) -> dict[str, Any]:
    def ports(port: int | None) -> list[dict[str, Any]]:
        return [{"ports": [{"port": str(port), "protocol": "TCP"}]}] if port else []

    fqdn_rules = [{"toFQDNs": [{"matchPattern" if "*" in host else "matchName": host}], "toPorts": ports(port)}
                  for host, port in hostnames]
    dns_rule = {"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system",
                                                 "k8s:k8s-app": "kube-dns"}}],
                "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}], "rules": {"dns": [{"matchPattern": "*"}]}}]}
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": metadata_for(task, object_name(task.metadata.name, "-fqdn")),
            "spec": {"endpointSelector": {"matchLabels": labels_for(task)}, "egress": [dns_rule, *fqdn_rules]}}
