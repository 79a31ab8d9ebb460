"""The e2e suite's cluster (see kind.py for which one), and a throwaway namespace per test."""

import os
import uuid
from pathlib import Path

import pytest

from .kind import (
    choose_cluster,
    cluster_name,
    images_to_load,
    kind_cluster,
    prepare_images,
    throwaway_cluster,
)
from .test_operator_e2e import _cluster


@pytest.fixture(scope="session")
def cluster_choice():
    return choose_cluster(os.environ)


@pytest.fixture(scope="session")
def kubeconfig(request, tmp_path_factory, cluster_choice):
    """The kubeconfig the suite uses (None: the default one); a kind cluster's for the whole session."""
    if not cluster_choice.kind:
        yield os.environ.get("KUBECONFIG")
        return
    problem = prepare_images()
    if problem:
        pytest.fail(problem)
    option = request.config.getoption
    path = Path(option("kubeconfig") or tmp_path_factory.mktemp("kind") / "kubeconfig")
    cluster = kind_cluster(cluster_name(option("cluster_name")), path, node_image=option("kind_image"))
    with (throwaway_cluster(cluster, images_to_load(), keep=option("keep_cluster")) as config,
          pytest.MonkeyPatch.context() as env):
        env.setenv("KUBECONFIG", str(config))   # for kubectl, helm, KopfRunner and the agent alike
        yield str(config)


@pytest.fixture(scope="module")
def cluster(kubeconfig, cluster_choice):
    # a kind cluster made for this run must answer: failing, not skipping, when it does not
    return _cluster(cluster_choice.reason, required=cluster_choice.kind)


@pytest.fixture
def namespace(cluster):
    import kubernetes
    core = kubernetes.client.CoreV1Api(cluster)
    name = f"expbuild-e2e-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)
