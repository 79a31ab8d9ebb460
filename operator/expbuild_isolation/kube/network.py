"""spec.network -> a per-task NetworkPolicy that selects only that task's pod.

None and Localhost: deny all ingress and egress (loopback never leaves the pod).
Restricted: egress only to the allowed CIDRs (TCP on the given port, every port
when none is given); ingress denied. Hostnames need a network plugin that
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
from .names import labels_for, metadata_for, object_name

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


def render_network_policies(task: ExecutionTask, config: OperatorConfig) -> list[dict[str, Any]]:
    """The NetworkPolicy (and, for hostnames, the Cilium policy) fencing the task's pod."""
    net = task.spec.network
    if net.policy is NetworkMode.FULL:
        return []
    selector = {"matchLabels": labels_for(task)}
    policy: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata_for(task, object_name(task.metadata.name)),
        "spec": {"podSelector": selector, "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []},
    }
    if net.policy is not NetworkMode.RESTRICTED:
        return [policy]
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
