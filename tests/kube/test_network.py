from __future__ import annotations

import pytest

from expbuild_isolation.kube.config import OperatorConfig
from expbuild_isolation.kube.errors import RenderError
from expbuild_isolation.kube import render
from expbuild_isolation.kube.network import render_network_policies, render_shared_policy, shared_policy_intact

from .conftest import make_task, validate_k8s


@pytest.mark.parametrize("policy", ["None", "Localhost"])
def test_no_network_means_the_namespaces_deny_all_policy_selects_the_pod(config, policy):
    task = make_task(network={"policy": policy})
    assert render_network_policies(task, config) == []  # no write of its own: the shared fence applies
    shared = render_shared_policy("ci")
    assert shared["metadata"]["name"] == "expbuild-isolation-deny-all" and shared["metadata"]["namespace"] == "ci"
    assert shared["spec"] == {"podSelector": {"matchLabels": {"expbuild.io/network": "isolated",
                                                              "app.kubernetes.io/managed-by": "expbuild-isolation"}},
                              "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}
    validate_k8s(shared)
    pod_labels = render.render_job(task, config)["spec"]["template"]["metadata"]["labels"]
    assert shared["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize("policy", ["Restricted", "Full"])
def test_pods_that_may_reach_something_are_not_selected_by_the_deny_all_policy(config, policy):
    extra = {"allow": ["10.0.0.0/8:443"]} if policy == "Restricted" else {}
    labels = render.render_job(make_task(network={"policy": policy, **extra}), config)["spec"]["template"]["metadata"]
    assert "expbuild.io/network" not in labels["labels"]


def test_a_changed_shared_policy_is_noticed_but_not_the_servers_own_way_of_storing_it():
    stored = render_shared_policy("ci")
    del stored["spec"]["ingress"], stored["spec"]["egress"]  # the API server leaves empty lists out
    assert shared_policy_intact(stored)
    opened = render_shared_policy("ci")
    opened["spec"]["egress"] = [{}]  # allow all egress
    assert not shared_policy_intact(opened)
    narrowed = render_shared_policy("ci")
    narrowed["spec"]["podSelector"] = {"matchLabels": {"nothing": "here"}}
    assert not shared_policy_intact(narrowed)
    assert not shared_policy_intact({"spec": {"podSelector": stored["spec"]["podSelector"],
                                              "policyTypes": ["Ingress"]}})


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
