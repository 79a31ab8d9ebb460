"""More than one operator replica: the operator creates kopf's peering object before kopf needs it.

kopf only patches an existing peering object; without one, every replica would
believe it is alone and serve every task. The chart cannot create the object
(its CRD comes in the same release), so the operator does, at startup.
"""

from __future__ import annotations

from typing import Any

import kmock as kmock_lib

from .conftest import ALL_VERBS, declare_resources, eventually, running_operator

CLUSTER_PEERINGS = "/apis/kopf.dev/v1/clusterkopfpeerings"


def declare_peerings(server: Any) -> None:
    info = kmock_lib.ResourceInfo
    server.resources["kopf.dev/v1/kopfpeerings"] = info(kind="KopfPeering", namespaced=True, verbs=ALL_VERBS)
    server.resources["kopf.dev/v1/clusterkopfpeerings"] = info(kind="ClusterKopfPeering", namespaced=False,
                                                               verbs=ALL_VERBS)


def _requests(server: Any, method: str, path: str) -> list[Any]:
    return [r for r in list(server) if r.method.value == method and r.url.path.startswith(path)]


async def test_a_missing_peering_object_is_created_then_kopf_keeps_it_alive(kmock, operator_config):
    declare_resources(kmock)
    declare_peerings(kmock)
    async with running_operator(kmock, operator_config, peering="expbuild-isolation"):
        created = _requests(kmock, "POST", CLUSTER_PEERINGS)
        assert len(created) == 1 and created[0].data["metadata"]["name"] == "expbuild-isolation"

        async def patched() -> bool:
            return bool(_requests(kmock, "PATCH", f"{CLUSTER_PEERINGS}/expbuild-isolation"))
        await eventually(patched, what="kopf's keep-alive in the peering object")


async def test_an_existing_peering_object_is_left_as_it_is(kmock, operator_config):
    declare_resources(kmock)
    declare_peerings(kmock)
    kmock.objects["kopf.dev/v1/clusterkopfpeerings", None, "expbuild-isolation"] = {
        "apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
        "metadata": {"name": "expbuild-isolation", "labels": {"mine": "yes"}}}
    async with running_operator(kmock, operator_config, peering="expbuild-isolation"):
        async def patched() -> bool:
            return bool(_requests(kmock, "PATCH", f"{CLUSTER_PEERINGS}/expbuild-isolation"))
        await eventually(patched, what="kopf's keep-alive in the peering object")
    assert not [r for r in _requests(kmock, "PUT", CLUSTER_PEERINGS) + _requests(kmock, "DELETE", CLUSTER_PEERINGS)]
    async with kmock.request("GET", f"{CLUSTER_PEERINGS}/expbuild-isolation") as response:
        assert (await response.json(content_type=None))["metadata"]["labels"] == {"mine": "yes"}
