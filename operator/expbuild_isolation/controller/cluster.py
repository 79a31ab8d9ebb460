"""Every call the operator makes to the API server, over aiohttp on the event loop (``apiserver``).

The connection comes from the operator's kopf login handler (``apiserver.login``, then
``Cluster.from_connection``), so kopf's watches and the operator's own calls always share one set of
credentials: kubeconfig outside a cluster, the service account inside, a test server in tests.

Not the ``kubernetes`` client in worker threads, as it once was: under a burst of 200 tasks its
threads, model serialization and urllib3 were a quarter of the operator's CPU (issue #16).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from .. import __version__
from ..api.policy import POLICY_PLURAL
from ..api.task import GROUP, PLURAL, VERSION
from ..apiserver import ApiError, ApiServer
from ..kube.names import TASK_LABEL, task_label

_COLLECTIONS = {
    ("v1", "ConfigMap"): "/api/v1/namespaces/{ns}/configmaps",
    ("v1", "Pod"): "/api/v1/namespaces/{ns}/pods",
    ("v1", "Event"): "/api/v1/namespaces/{ns}/events",
    ("batch/v1", "Job"): "/apis/batch/v1/namespaces/{ns}/jobs",
    ("networking.k8s.io/v1", "NetworkPolicy"): "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    ("cilium.io/v2", "CiliumNetworkPolicy"): "/apis/cilium.io/v2/namespaces/{ns}/ciliumnetworkpolicies",
    (f"{GROUP}/{VERSION}", "ExecutionTask"): f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}",
    ("coordination.k8s.io/v1", "Lease"): "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
    ("kopf.dev/v1", "KopfPeering"): "/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings",
    ("kopf.dev/v1", "ClusterKopfPeering"): "/apis/kopf.dev/v1/clusterkopfpeerings",
    ("v1", "Namespace"): "/api/v1/namespaces",
    (f"{GROUP}/{VERSION}", "ExecutionPolicy"): f"/apis/{GROUP}/{VERSION}/{POLICY_PLURAL}",
}


def refused_for_good(exc: ApiError) -> bool:
    """A 4xx that asking again will not change (invalid, forbidden by admission or RBAC), unlike 408/409/429.

    Not 401 either: that is the operator's own credentials (a rotated token), never the task's fault; kopf
    logs in again when its watches meet it, and the task's start is tried again.
    """
    return 400 <= exc.status < 500 and exc.status not in (401, 408, 409, 429)


class NotOwned(Exception):
    """An object with the task's deterministic name exists but belongs to something else."""


def is_controlled_by(obj: dict[str, Any], owner_uid: str) -> bool:
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return bool(owner_uid) and any(ref.get("uid") == owner_uid and ref.get("controller") for ref in owners)


class Cluster(ApiServer):
    """The operator's calls, each one HTTP request on the event loop (``apiserver``)."""

    user_agent = f"expbuild-isolation-operator/{__version__}"

    @staticmethod
    def collection(api_version: str, kind: str, namespace: str) -> str:
        return _COLLECTIONS[(api_version, kind)].format(ns=quote(namespace))

    async def create_or_adopt(self, obj: dict[str, Any], owner_uid: str) -> dict[str, Any]:
        """Create ``obj``; if its name is taken, return the existing one when the task owns it."""
        meta = obj["metadata"]
        path = self.collection(obj["apiVersion"], obj["kind"], meta["namespace"])
        try:
            return await self.call("POST", path, body=obj)
        except ApiError as exc:
            if exc.status != 409:
                raise ApiError(exc.status, exc.message, kind=f"{obj['kind']} {meta['name']}") from exc
        existing = await self.call("GET", f"{path}/{quote(meta['name'])}")
        if is_controlled_by(existing, owner_uid):
            return existing
        raise NotOwned(f"{obj['kind']} {meta['namespace']}/{meta['name']} already exists and is not owned by "
                       f"this task; delete it or rename the task")

    async def create_if_absent(self, obj: dict[str, Any]) -> bool:
        """Create ``obj`` unless an object of its name exists (left as it is); True when created."""
        path = self.collection(obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace") or "")
        try:
            await self.call("POST", path, body=obj)
            return True
        except ApiError as exc:
            if exc.status != 409:
                raise
            return False

    async def ensure(self, obj: dict[str, Any], intact: Callable[[dict[str, Any]], bool]) -> bool:
        """Make ``obj`` exist and ``intact`` (created, or put back over a changed one); True if it wrote.

        ``intact`` judges the stored object: the API server returns what it stored, with defaults filled in and
        empty lists left out, so comparing dicts would see a change where there is none.
        """
        meta = obj["metadata"]
        current = await self.get(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        if current is not None and intact(current):
            return False
        path = self.collection(obj["apiVersion"], obj["kind"], meta["namespace"])
        if current is None:
            # created meanwhile by someone else (409): check what it says
            return await self.create_if_absent(obj) or await self.ensure(obj, intact)
        # The whole spec replaced (a merge patch would keep labels someone added to a selector).
        await self.call("PATCH", f"{path}/{quote(meta['name'])}", body=[{"op": "replace", "path": "/spec",
                                                                          "value": obj["spec"]}],
                        content_type="application/json-patch+json")
        return True

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.call("GET", f"{self.collection(api_version, kind, namespace)}/{quote(name)}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def task_path(self, namespace: str, name: str) -> str:
        return f"{self.collection(f'{GROUP}/{VERSION}', 'ExecutionTask', namespace)}/{quote(name)}"

    async def get_task(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.get(f"{GROUP}/{VERSION}", "ExecutionTask", namespace, name)

    async def patch_task_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        path = f"{self.task_path(namespace, name)}/status"
        await self.call("PATCH", path, body={"status": status}, content_type="application/merge-patch+json")

    async def patch_task(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """A merge patch of the task itself (metadata: the node label of a placed task)."""
        path = self.task_path(namespace, name)
        await self.call("PATCH", path, body=patch, content_type="application/merge-patch+json")

    async def set_finalizer(self, body: dict[str, Any], finalizer: str, *, present: bool) -> bool:
        """Add or remove ``finalizer`` on the task ``body``, in one JSON patch that first tests the
        resourceVersion the new list was computed from (kopf's own way): nobody else's finalizer is lost.

        False when the test failed or the task is gone: someone wrote it meanwhile, and that write's event
        brings the task back to the caller.
        """
        meta = body.get("metadata") or {}
        current = list(meta.get("finalizers") or [])
        wanted = [name for name in current if name != finalizer] + ([finalizer] if present else [])
        if wanted == current:
            return True
        path = self.task_path(meta["namespace"], meta["name"])
        ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]}
               ] if meta.get("resourceVersion") else []  # (an API server always sets it; an emulator may not)
        ops.append({"op": "add", "path": "/metadata/finalizers", "value": wanted} if wanted
                   else {"op": "remove", "path": "/metadata/finalizers"})
        try:
            await self.call("PATCH", path, body=ops, content_type="application/json-patch+json")
        except ApiError as exc:
            if exc.status not in (404, 409, 422):
                raise
            return False
        return True

    async def list_labelled(self, api_version: str, kind: str, namespace: str, label: str) -> list[dict[str, Any]]:
        """Objects carrying ``label`` (filtered here too: not every server honours labelSelector)."""
        path = self.collection(api_version, kind, namespace)
        listing = await self.call("GET", path, query=[("labelSelector", label)])
        return [item for item in listing.get("items") or []
                if label in ((item.get("metadata") or {}).get("labels") or {})]

    async def list_items(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every object of a kind: in ``namespace``, or in all namespaces (None), or of a cluster-scoped kind."""
        path = _COLLECTIONS[(api_version, kind)]
        path = path.format(ns=quote(namespace)) if namespace else path.replace("/namespaces/{ns}", "")
        return list((await self.call("GET", path)).get("items") or [])

    async def pod_for_task(self, namespace: str, task_name: str, job: dict[str, Any] | None) -> dict[str, Any] | None:
        """The newest pod the task's ``job`` controls (there is at most one with backoffLimit 0).

        A label is not proof: anyone who may create pods in the namespace can label one after a task. Only a
        pod whose controller is the task's Job (by uid) speaks for the task.
        """
        job_uid = ((job or {}).get("metadata") or {}).get("uid")
        if not job_uid:
            return None
        selector = f"{TASK_LABEL}={task_label(task_name)}"
        listing = await self.call("GET", self.collection("v1", "Pod", namespace), query=[("labelSelector", selector)])
        pods = [pod for pod in listing.get("items") or [] if is_controlled_by(pod, job_uid)]
        pods.sort(key=lambda pod: pod.get("metadata", {}).get("creationTimestamp") or "")
        return pods[-1] if pods else None

    async def delete_owned_job(self, namespace: str, name: str, owner_uid: str) -> bool:
        """Delete the Job ``name`` only if the task ``owner_uid`` controls it; True when it was deleted.

        The operator can delete Jobs its tenants cannot: a task named after someone else's Job must not make
        it delete that Job. The uid precondition makes the check and the delete one step (a Job replaced in
        between is left alone).
        """
        path = f"{self.collection('batch/v1', 'Job', namespace)}/{quote(name)}"
        job = await self.get("batch/v1", "Job", namespace, name)
        if job is None or not is_controlled_by(job, owner_uid):
            return False
        try:
            await self.call("DELETE", path, body={"kind": "DeleteOptions", "apiVersion": "v1",
                                                  "propagationPolicy": "Background",
                                                  "preconditions": {"uid": job["metadata"].get("uid")}})
        except ApiError as exc:
            if exc.status not in (404, 409):  # gone, or replaced by another object since we read it
                raise
            return False
        return True

    async def log_tail(self, namespace: str, pod: str, container: str, limit_bytes: int) -> tuple[str, bool]:
        """The last ``limit_bytes`` of a container's log, and whether it was cut."""
        if limit_bytes <= 0:
            return "", False
        path = f"{self.collection('v1', 'Pod', namespace)}/{quote(pod)}/log"
        lines = max(10, limit_bytes // 16)
        data = await self.call("GET", path, query=[("container", container), ("tailLines", lines)], raw=True)
        text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
        cut = len(text.encode()) > limit_bytes
        return (text.encode()[-limit_bytes:].decode(errors="ignore") if cut else text), cut or text.count("\n") >= lines
