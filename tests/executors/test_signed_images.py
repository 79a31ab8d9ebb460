"""``expbuild-isolation run`` with real Docker runs an image only when a trusted publisher signed its digest.

The image is built here from the local busybox image and pushed to a registry started here on the loopback
(Debian's ``docker-registry``): Docker records a manifest digest only for an image it pushed or pulled, and
a signature names a digest. The key pair is generated here and the payload signed as cosign would.

Judged from the host: a task that ran left its output, digested by the worker, and Docker's own event
stream shows a container created from the image; a refused task left neither. The signed task is the
positive control of every refusal: same image, same worker file, same command.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from tests.unit.signature_cases import Publisher, cases

from container_cases import required, usable

ROOT = Path(__file__).resolve().parents[2]
BASE = "localhost/expbuild-busybox:latest"
REGISTRY = shutil.which("docker-registry")
TRUSTED, OTHER = Publisher("ci-release"), Publisher("someone-else")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A registry on 127.0.0.1 for this module (Docker talks plain HTTP to loopback registries)."""
    if REGISTRY is None:
        if required("docker"):
            pytest.fail("docker-registry is not installed (bash .ci/setup-containers.sh installs it)")
        pytest.skip("docker-registry is not installed: run .ci/setup-containers.sh")
    root, port = tmp_path_factory.mktemp("registry"), _free_port()
    (root / "config.yml").write_text(yaml.safe_dump({
        "version": 0.1, "log": {"level": "warn"}, "http": {"addr": f"127.0.0.1:{port}"},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}}}))
    server = subprocess.Popen([REGISTRY, "serve", str(root / "config.yml")], stdout=subprocess.DEVNULL,
                              stderr=open(root / "log", "wb"))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail(f"the registry did not answer: {(root / 'log').read_text()[-500:]}")
                time.sleep(0.1)
        yield f"localhost:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def signed_image(registry):  # type: ignore[no-untyped-def]
    """(repository, digest, image ID) of a tiny image pushed to the registry: only Docker's copy is used."""
    repository = f"{registry}/expbuild-signed-{uuid.uuid4().hex[:8]}"
    dockerfile = f"FROM {BASE}\nLABEL expbuild.io/signature-test={uuid.uuid4().hex}\n"
    subprocess.run(["docker", "build", "-q", "-t", f"{repository}:t", "-"], input=dockerfile, text=True,
                   capture_output=True, check=True)
    try:
        subprocess.run(["docker", "push", f"{repository}:t"], capture_output=True, text=True, check=True)
        inspect = json.loads(subprocess.run(["docker", "image", "inspect", f"{repository}:t"], capture_output=True,
                                            text=True, check=True).stdout)[0]
        digest = next(d for d in inspect["RepoDigests"] if d.startswith(f"{repository}@")).partition("@")[2]
        yield repository, digest, inspect["Id"]
    finally:
        subprocess.run(["docker", "rmi", "-f", f"{repository}:t"], capture_output=True)
        assert repository not in subprocess.run(["docker", "images", "--digests"], capture_output=True,
                                                text=True).stdout


def worker_file(path: Path) -> Path:
    path.write_text(f'work_dir = "{path.parent / "work"}"\n[executor]\ntype = "docker"\n'
                    '[policy.images]\nverify_signature = true\n[[policy.images.trusted_publishers]]\n'
                    f'name = "{TRUSTED.name}"\npublic_key = """\n{TRUSTED.pem}"""\n')
    return path


def run(tmp_path: Path, image: str, notes: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict]:
    manifest = {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask",
                "metadata": {"name": "signed-run", "annotations": notes},
                "spec": {"image": image, "command": ["sh", "-c", "echo ran > out.txt"], "timeout": "60s",
                         "outputs": {"paths": ["out.txt"]}}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(manifest))
    done = subprocess.run([sys.executable, "-m", "expbuild_isolation.cli", "run", str(tmp_path / "task.yaml"),
                           "--config", str(worker_file(tmp_path / "worker.toml")), "-o", "json"],
                          capture_output=True, text=True, timeout=120, check=False,
                          env=os.environ | {"PYTHONPATH": str(ROOT / "operator")})
    assert "Traceback" not in done.stderr, done.stderr
    return done, json.loads(done.stdout)["status"]


def containers_created_from(image_id: str, since: float) -> list[str]:
    """What Docker itself says: containers created from ``image_id`` since ``since`` (its event stream)."""
    events = subprocess.run(["docker", "events", "--since", f"{since:.3f}", "--until", f"{time.time() + 0.5:.3f}",
                             "--filter", "type=container", "--filter", "event=create", "--format", "{{json .}}"],
                            capture_output=True, text=True, check=True, timeout=30).stdout
    return [e["id"] for e in map(json.loads, events.splitlines()) if e.get("from") and
            subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", e["from"]], capture_output=True,
                           text=True).stdout.strip() == image_id]


@pytest.mark.parametrize("case", ["signed", "unsigned", "other-key", "other-digest", "other-repository", "unpinned"])
async def test_run_runs_only_the_image_a_trusted_publisher_signed(tmp_path, signed_image, case):
    await usable("docker")
    repository, digest, image_id = signed_image
    found = cases(repository, digest, TRUSTED, OTHER)[case]
    since = time.time()
    done, status = run(tmp_path, found.image, found.annotations)
    created = containers_created_from(image_id, since)
    if case == "signed":
        assert done.returncode == 0 and status["phase"] == "Succeeded", done.stdout + done.stderr
        assert [o["path"] for o in status["outputs"]] == ["out.txt"] and status["outputs"][0]["sizeBytes"] == 4
        assert status["imageID"] == image_id and len(created) == 1
        return
    assert done.returncode == 125, done.stdout + done.stderr
    assert (status["phase"], status["reason"]) == ("Error", "UntrustedImage"), status
    assert status["message"].startswith(f"spec.image: {found.image!r} is not trusted by the worker config's "
                                        f"[policy] (")
    assert all(words in status["message"] for words in found.words), status["message"]
    assert not status.get("outputs") and created == [], "the untrusted image ran"
