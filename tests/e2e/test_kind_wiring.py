"""The e2e suite's cluster choice and its throwaway kind cluster, checked without a cluster.

kind cannot run everywhere the suite runs (it needs privileged containers), so this checks the
wiring itself: which cluster each environment gets, which images go into kind, and the exact kind
commands pytest-kind runs for the suite, through a stand-in ``kind`` that records its argv. No API
server is pretended: nothing here talks to a cluster.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from .kind import (
    DEFAULT_NAME,
    choose_cluster,
    cluster_name,
    images_to_load,
    kind_cluster,
    missing_images,
    throwaway_cluster,
)

ROOT = Path(__file__).resolve().parents[2]


def on_path(*tools: str):
    return lambda tool: f"/opt/bin/{tool}" if tool in tools else None


@pytest.mark.parametrize(("environ", "tools", "kind", "reason"), [
    ({"KUBECONFIG": "/home/me/.kube/dev"}, ("kind", "docker"), False, "KUBECONFIG=/home/me/.kube/dev"),
    ({}, ("kind", "docker"), True, "a throwaway kind cluster"),
    ({"KUBECONFIG": ""}, ("kind", "docker"), True, "a throwaway kind cluster"),
    ({}, ("kind",), False, "docker not on PATH"),
    ({}, ("docker",), False, "kind not on PATH"),
    ({}, (), False, "kind and docker not on PATH"),
])
def test_kubeconfig_wins_then_kind_with_docker_then_the_default_kubeconfig(environ, tools, kind, reason):
    choice = choose_cluster(environ, which=on_path(*tools))
    assert choice.kind is kind
    assert reason in choice.reason


def test_kind_gets_the_operator_image_of_the_install_manifests_and_the_example_image():
    install = yaml.safe_load_all((ROOT / "manifests" / "install" / "20-expbuild-isolation.yaml").read_text())
    operator = next(doc for doc in install if doc and doc["kind"] == "Deployment")
    hello = yaml.safe_load((ROOT / "manifests" / "examples" / "hello.yaml").read_text())
    assert images_to_load() == [operator["spec"]["template"]["spec"]["containers"][0]["image"],
                                hello["spec"]["image"]]


def test_the_cluster_is_the_kind_on_path_not_a_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cluster = kind_cluster("expbuild-e2e", tmp_path / "kubeconfig", which=on_path("kind"))
    assert cluster.kind_path == Path("/opt/bin/kind")
    assert cluster.kubeconfig_path == tmp_path / "kubeconfig"
    assert cluster.name == "expbuild-e2e"


@pytest.mark.parametrize(("option", "name"), [(None, DEFAULT_NAME), ("pytest-kind", DEFAULT_NAME),
                                              ("mine", "mine")])
def test_cluster_name_is_ours_unless_one_is_chosen(option, name):
    assert cluster_name(option) == name


RECORDING_KIND = """\
#!/bin/sh
# Records each call; "create cluster" writes the kubeconfig kind would write (pytest-kind reads it).
echo "$*" >> "{log}"
case "$1 $2" in
  "create cluster")
    for arg in "$@"; do
      case $arg in --kubeconfig=*) cat > "${{arg#--kubeconfig=}}" <<'EOF'
{kubeconfig}
EOF
      esac
    done ;;
esac
"""

KUBECONFIG = {"apiVersion": "v1", "kind": "Config", "current-context": "kind-expbuild-e2e",
              "clusters": [{"name": "kind-expbuild-e2e", "cluster": {"server": "https://127.0.0.1:1"}}],
              "users": [{"name": "kind-expbuild-e2e", "user": {"token": "unused"}}],
              "contexts": [{"name": "kind-expbuild-e2e",
                            "context": {"cluster": "kind-expbuild-e2e", "user": "kind-expbuild-e2e"}}]}


@pytest.fixture
def recording_kind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # pytest-kind makes .pytest-kind/<name> in the working directory
    log = tmp_path / "kind.log"
    script = tmp_path / "bin" / "kind"
    script.parent.mkdir()
    script.write_text(RECORDING_KIND.format(log=log, kubeconfig=textwrap.indent(yaml.safe_dump(KUBECONFIG), "")))
    script.chmod(0o755)
    return script, log


@pytest.mark.parametrize("keep", [False, True])
def test_the_suite_creates_loads_both_images_and_deletes_the_cluster_even_when_a_test_fails(recording_kind,
                                                                                             tmp_path, keep):
    script, log = recording_kind
    kubeconfig = tmp_path / "kubeconfig"
    cluster = kind_cluster(DEFAULT_NAME, kubeconfig, which=lambda tool: str(script) if tool == "kind" else None)
    images = images_to_load()
    with pytest.raises(RuntimeError, match="a test failed"), throwaway_cluster(cluster, images, keep=keep) as config:
        assert config == kubeconfig and yaml.safe_load(config.read_text()) == KUBECONFIG
        raise RuntimeError("a test failed")
    expected = ["get clusters", f"create cluster --name={DEFAULT_NAME} --kubeconfig={kubeconfig}",
                *(f"load docker-image --name {DEFAULT_NAME} {image}" for image in images)]
    if not keep:
        expected.append(f"delete cluster --name={DEFAULT_NAME} --kubeconfig={kubeconfig}")
    assert log.read_text().splitlines() == expected
    assert not (tmp_path / ".pytest-kind").exists()


def test_missing_images_asks_docker():
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], check=False, capture_output=True).returncode:
        pytest.skip("docker is not running here")
    present = images_to_load()[1]
    if missing_images([present]):
        pytest.skip(f"{present} is not built here (.ci/setup-containers.sh)")
    absent = "localhost/expbuild-e2e-no-such-image:0"
    assert missing_images([present, absent]) == [absent]
