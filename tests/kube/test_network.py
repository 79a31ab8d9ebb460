from __future__ import annotations

import pytest

from expbuild_isolation.kube.config import OperatorConfig
from expbuild_isolation.kube.errors import RenderError
from expbuild_isolation.kube.network import render_network_policies

from .conftest import make_task, validate_k8s


@pytest.mark.parametrize("policy", ["None", "Localhost"])
def test_no_network_means_deny_all_both_ways(config, policy):
    (np,) = render_network_policies(make_task(network={"policy": policy}), config)
    assert np["spec"] == {"podSelector": {"matchLabels": {"expbuild.io/task": "compile-42",
                                                          "app.kubernetes.io/managed-by": "expbuild-isolation"}},
                          "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}
    validate_k8s(np)


def test_full_network_has_no_policy(config):
    assert render_network_policies(make_task(network={"policy": "Full"}), config) == []


def test_restricted_allows_only_the_listed_cidrs_and_ports_without_dns(config):
    task = make_task(network={"policy": "Restricted", "allow": ["10.20.0.5/16:443", "192.168.1.7", "[fd00::1]:8080"]})
    (np,) = render_network_policies(task, config)
    assert np["spec"]["ingress"] == []
    assert np["spec"]["egress"] == [
        {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"protocol": "TCP", "port": 443}]},
        {"to": [{"ipBlock": {"cidr": "192.168.1.7/32"}}]},
        {"to": [{"ipBlock": {"cidr": "fd00::1/128"}}], "ports": [{"protocol": "TCP", "port": 8080}]},
    ]
    validate_k8s(np)


def test_hostnames_are_refused_where_the_cluster_cannot_enforce_them(config):
    task = make_task(network={"policy": "Restricted", "allow": ["10.0.0.0/8", "github.com:443"]})
    with pytest.raises(RenderError, match="'github.com:443' name hosts") as err:
        render_network_policies(task, config)
    assert err.value.reason == "NetworkPolicyUnavailable"


def test_hostnames_become_an_fqdn_policy_with_dns_where_the_cluster_enforces_them():
    task = make_task(network={"policy": "Restricted", "allow": ["github.com:443", "*.pypi.org"]})
    np, fqdn = render_network_policies(task, OperatorConfig(fqdn_policies=True))
    assert np["spec"]["egress"] == [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                                             "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                                     "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]
    assert fqdn["kind"] == "CiliumNetworkPolicy"
    assert {"toFQDNs": [{"matchName": "github.com"}], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]} \
        in fqdn["spec"]["egress"]
    assert {"toFQDNs": [{"matchPattern": "*.pypi.org"}], "toPorts": []} in fqdn["spec"]["egress"]
    validate_k8s(np)
