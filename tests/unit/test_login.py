"""``apiserver.login``: the operator's and the agent's credentials, in a pod and from a kubeconfig, against a real
TLS server; the ``kubernetes`` client library only for a kubeconfig that needs it (an exec plugin).
"""

from __future__ import annotations

import base64
import json
import sys
import tomllib
from pathlib import Path

import kopf
import pytest
import yaml

from expbuild_isolation import apiserver as transport
from expbuild_isolation.controller.cluster import Cluster

from .tls import key_pem, pem, version

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def outside(tmp_path, monkeypatch):
    """No pod around: no service account, no in-cluster variables, and a kubeconfig path to fill."""
    monkeypatch.setattr(transport, "SERVICE_ACCOUNT", tmp_path / "no-service-account")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    kubeconfig = tmp_path / "kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    return kubeconfig


def write_kubeconfig(path: Path, url: str, ca: bytes, user: dict) -> None:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": url,
                                                  "certificate-authority-data": base64.b64encode(ca).decode()}}],
        "users": [{"name": "me", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "me", "namespace": "ci"}}]}))


async def test_in_a_pod_the_service_account_is_used_before_any_kubeconfig(apiserver, outside, tmp_path,
                                                                         monkeypatch):
    pki, url, seen = apiserver
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("sa-token\n")
    (account / "ca.crt").write_bytes(pki.ca_file.read_bytes())
    (account / "namespace").write_text("expbuild-system")
    monkeypatch.setattr(transport, "SERVICE_ACCOUNT", account)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", url.rsplit(":", 1)[1])
    write_kubeconfig(outside, url, pem(pki.ca), {"token": "kubeconfig-token"})
    info = transport.login()
    assert info.default_namespace == "expbuild-system"
    assert (await version(Cluster.from_connection(info)))["gitVersion"] == "v1.36.0"
    assert seen[-1]["authorization"] == "Bearer sa-token"


def test_an_ipv6_service_host_is_bracketed(tmp_path, monkeypatch):
    (tmp_path / "token").write_text("t")
    monkeypatch.setattr(transport, "SERVICE_ACCOUNT", tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert transport.login().server == "https://[fd00::1]:443"


async def test_outside_a_kubeconfig_client_certificate_is_used_without_the_client_library(apiserver, outside,
                                                                                         monkeypatch):
    pki, url, seen = apiserver
    write_kubeconfig(outside, url, pem(pki.ca), {
        "client-certificate-data": base64.b64encode(pem(pki.client)).decode(),
        "client-key-data": base64.b64encode(key_pem(pki.client_key)).decode()})
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # as in the image: the library is not installed
    info = transport.login()
    assert info.default_namespace == "ci"
    await version(Cluster.from_connection(info))
    assert seen[-1]["client"] == "system:expbuild-operator"


def exec_user(tmp_path: Path) -> dict:
    plugin = tmp_path / "credential-plugin"
    credential = {"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                  "status": {"token": "exec-token"}}
    plugin.write_text(f"#!/bin/sh\necho '{json.dumps(credential)}'\n")
    plugin.chmod(0o755)
    return {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": str(plugin),
                     "interactiveMode": "Never"}}


def test_an_exec_plugin_without_the_client_library_is_a_clear_login_error(apiserver, outside, tmp_path,
                                                                          monkeypatch):
    pki, url, _ = apiserver
    write_kubeconfig(outside, url, pem(pki.ca), exec_user(tmp_path))
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    monkeypatch.setitem(sys.modules, "kubernetes.config", None)
    with pytest.raises(kopf.LoginError, match="pip install kubernetes"):
        transport.login()


async def test_an_exec_plugin_is_run_by_the_client_library_when_it_is_installed(apiserver, outside, tmp_path,
                                                                              monkeypatch):
    pytest.importorskip("kubernetes", reason="the kubernetes client library is not installed here")
    from kubernetes.config import kube_config
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(outside))  # (read once, at its import)
    pki, url, seen = apiserver
    write_kubeconfig(outside, url, pem(pki.ca), exec_user(tmp_path))
    info = transport.login(logger=__import__("logging").getLogger("test"))
    await version(Cluster.from_connection(info))
    assert seen[-1]["authorization"] == "Bearer exec-token"


@pytest.mark.parametrize("content", [None, "current-context: nowhere\ncontexts: []\n", "{{{ not yaml"])
def test_an_unusable_kubeconfig_is_a_login_error_naming_it(outside, content):
    if content is not None:
        outside.write_text(content)
    with pytest.raises(kopf.LoginError, match="kubeconfig"):
        transport.login()


def test_the_client_library_is_not_a_dependency_of_the_package_or_the_image():
    """kopf imports its ~900 model modules whenever it is installed: 33 MiB of every operator and agent."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.split(">")[0].split("=")[0].strip() == "kubernetes"]
    assert any(d.startswith("kubernetes") for d in project["optional-dependencies"]["test"])  # the e2e suite's
    lock = (ROOT / "image" / "requirements.lock").read_text().splitlines()
    assert not [line for line in lock if line.startswith("kubernetes==")]
    assert [line for line in lock if line.startswith("kopf==")]  # positive control: the lock is read
