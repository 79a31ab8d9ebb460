"""Which cluster the e2e suite runs against, and the throwaway kind cluster when that is the choice.

- ``KUBECONFIG`` set: that cluster, whatever else is installed.
- no ``KUBECONFIG``, ``kind`` and ``docker`` on PATH: a fresh kind cluster made through pytest-kind
  (the kind on PATH: pytest-kind would otherwise download one), with the operator image (made current
  with the checkout by ``.ci/build-image.sh``) and the example's image loaded; deleted at the end
  unless ``--keep-cluster``. ``--cluster-name`` and ``--kind-image`` are pytest-kind's options too.
- otherwise: the default kubeconfig as before; the tests skip with the reason when nothing answers.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from expbuild_isolation.kube.config import DEFAULT_SUPERVISOR_IMAGE
from pytest_kind import KindCluster

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "manifests" / "examples" / "hello.yaml"
BUILD_IMAGE = ["bash", str(ROOT / ".ci" / "build-image.sh")]
DEFAULT_NAME = "expbuild-e2e"
PYTEST_KIND_DEFAULT_NAME = "pytest-kind"   # pytest-kind's --cluster-name default: means "not chosen"


@dataclass(frozen=True)
class ClusterChoice:
    kind: bool      # True: a throwaway kind cluster; False: the kubeconfig (KUBECONFIG or the default)
    reason: str


def choose_cluster(environ: Mapping[str, str], which: Callable[[str], str | None] = shutil.which) -> ClusterChoice:
    if environ.get("KUBECONFIG"):
        return ClusterChoice(False, f"KUBECONFIG={environ['KUBECONFIG']}")
    missing = [tool for tool in ("kind", "docker") if which(tool) is None]
    if missing:
        return ClusterChoice(False, f"no KUBECONFIG, and no throwaway kind cluster: {' and '.join(missing)} "
                                    f"not on PATH")
    return ClusterChoice(True, "no KUBECONFIG; kind and docker on PATH: a throwaway kind cluster")


def images_to_load() -> list[str]:
    """What the cluster cannot pull: the operator image (also the Jobs' supervisor) and the example's."""
    return [DEFAULT_SUPERVISOR_IMAGE, yaml.safe_load(HELLO.read_text())["spec"]["image"]]


def missing_images(images: list[str]) -> list[str]:
    """The images the local Docker does not hold."""
    return [image for image in images
            if subprocess.run(["docker", "image", "inspect", image], check=False, capture_output=True).returncode != 0]


def kind_cluster(name: str, kubeconfig: Path, *, node_image: str | None = None,
                 which: Callable[[str], str | None] = shutil.which) -> KindCluster:
    """pytest-kind's cluster, driven by the kind (and kubectl, if any) on PATH, writing ``kubeconfig``."""
    kind, kubectl = which("kind"), which("kubectl")
    if kind is None:
        raise RuntimeError("kind is not on PATH")
    return KindCluster(name, kubeconfig, image=node_image, kind_path=Path(kind),
                       kubectl_path=Path(kubectl) if kubectl else None)


@contextmanager
def throwaway_cluster(cluster: KindCluster, images: list[str], *, keep: bool = False) -> Iterator[Path]:
    """Create (or reuse, as pytest-kind does) the cluster, load ``images``, yield its kubeconfig, delete it."""
    try:
        cluster.create()
        for image in images:
            cluster.load_docker_image(image)
        yield cluster.kubeconfig_path
    finally:
        if not keep:
            cluster.delete()
        _remove_empty(cluster.path)


def _remove_empty(path: Path) -> None:
    """pytest-kind makes .pytest-kind/<name> in the working directory even when nothing goes there."""
    for directory in (path, path.parent):
        try:
            directory.rmdir()
        except OSError:
            return


def prepare_images() -> str | None:
    """Make the operator image current (a no-op when it is); the reason when an image is still missing."""
    built = subprocess.run(BUILD_IMAGE, check=False, capture_output=True, text=True)
    if built.returncode != 0:
        return f"{' '.join(BUILD_IMAGE)} failed:\n{built.stderr[-2000:]}"
    missing = missing_images(images_to_load())
    if missing:
        return (f"Docker lacks {', '.join(missing)} to load into kind: run sudo bash .ci/setup-containers.sh "
                f"(the example image) and sudo bash .ci/build-image.sh (the operator image)")
    return None


def cluster_name(option: str | None) -> str:
    return option if option and option != PYTEST_KIND_DEFAULT_NAME else DEFAULT_NAME
