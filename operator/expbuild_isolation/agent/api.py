"""The few API calls a node agent makes, over aiohttp with the credentials of a ``kopf.ConnectionInfo``.

The agent is not a kopf operator (it needs one watch of its node's tasks, and
a second kopf operator on the tasks would join the operator's peering); it
borrows kopf's login only, so
in-cluster it authenticates with its service account and outside with the
kubeconfig, exactly like the operator, over the same transport (``apiserver``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp

from .. import __version__
from ..api.policy import POLICY_PLURAL
from ..api.task import GROUP, PLURAL, VERSION, object_name_problem
from ..apiserver import ApiError, ApiServer, error_message, refusal_message

TASKS = f"/apis/{GROUP}/{VERSION}"
LEASES = "/apis/coordination.k8s.io/v1"


def has_labels(item: dict[str, Any], labels: dict[str, str]) -> bool:
    """Checked here too: not every server honours labelSelector (KMock does not)."""
    return all(((item.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in labels.items())


def _selector(labels: dict[str, str]) -> dict[str, str]:
    return {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else {}


def segment(value: str) -> str:
    """One path segment of a URL: an object name, refused unless it is one, and quoted whole.

    Names in the agent's URLs come from tasks a tenant wrote; ``../../other/configmaps/x`` must never
    be normalized into another namespace's object.
    """
    problem = object_name_problem(value)
    if problem:
        raise ValueError(f"{value[:80]!r} {problem}")
    return quote(value, safe="")


def tasks_path(namespace: str | None, name: str = "") -> str:
    base = f"{TASKS}/namespaces/{segment(namespace)}/{PLURAL}" if namespace else f"{TASKS}/{PLURAL}"
    return f"{base}/{segment(name)}" if name else base


def leases_path(namespace: str | None, name: str = "") -> str:
    base = f"{LEASES}/namespaces/{segment(namespace)}/leases" if namespace else f"{LEASES}/leases"
    return f"{base}/{segment(name)}" if name else base


def config_map_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{segment(namespace)}/configmaps/{segment(name)}"


def policies_path() -> str:
    return f"{TASKS}/{POLICY_PLURAL}"


def namespace_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{segment(namespace)}"


def events_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{segment(namespace)}/events"


class AgentApi(ApiServer):
    user_agent = f"expbuild-isolation-agent/{__version__}"

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.call("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def items(self, path: str, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        return (await self.listing(path, labels))[0]

    async def listing(self, path: str, labels: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], str]:
        """The items with ``labels``, and the resourceVersion a watch continues from."""
        labels = labels or {}
        listing = await self.call("GET", path, query=_selector(labels) or None)
        version = str((listing.get("metadata") or {}).get("resourceVersion") or "")
        return [item for item in listing.get("items") or [] if has_labels(item, labels)], version

    async def watch(self, path: str, labels: dict[str, str], version: str, *,
                    timeout_seconds: int = 300) -> AsyncIterator[dict[str, Any]]:
        """The events after ``version`` of objects with ``labels``, until the server ends the stream.

        The server ends it after ``timeout_seconds``; if it does not, the client gives up a little later, and
        the stream simply ends too. An ERROR event raises ``ApiError`` with its code (410: the version is too
        old, list again).
        """
        query = _selector(labels) | {"watch": "true", "timeoutSeconds": str(timeout_seconds)}
        if version:
            query["resourceVersion"] = version
        timeout = aiohttp.ClientTimeout(total=timeout_seconds + 30, connect=30)
        headers = {"Accept": "application/json", **self._headers}
        streaming = False
        try:
            async with self._client().get(self.server + path, params=query, headers=headers, ssl=self._ssl,
                                          timeout=timeout) as response:
                if response.status >= 400:
                    raise ApiError(response.status, refusal_message(await response.read()))
                streaming = True
                async for event in _events(response.content):
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise ApiError(int(status.get("code") or 500), error_message(status))
                    if has_labels(event.get("object") or {}, labels):
                        yield event
        except asyncio.TimeoutError:
            if not streaming:
                raise
            # the server kept the stream open past timeoutSeconds: as good as ended

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.call("POST", path, body=body)

    async def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.call("PUT", path, body=body)

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.call("PATCH", path, body=body, content_type="application/merge-patch+json")


async def _events(content: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """One JSON event per line, however long the line (a task's status carries log tails)."""
    pending = b""
    async for chunk in content.iter_any():
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if pending.strip():
        yield json.loads(pending)
