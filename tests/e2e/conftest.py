"""A real cluster from KUBECONFIG for the e2e suite, and a throwaway namespace per test."""

import uuid

import pytest

from .test_operator_e2e import _cluster


@pytest.fixture(scope="module")
def cluster():
    return _cluster()


@pytest.fixture
def namespace(cluster):
    import kubernetes
    core = kubernetes.client.CoreV1Api(cluster)
    name = f"expbuild-e2e-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)
