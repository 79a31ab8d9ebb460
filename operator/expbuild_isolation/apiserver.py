"""One asynchronous HTTP connection to the Kubernetes API server, with the credentials of a ``kopf.ConnectionInfo``.

Shared by the operator (``controller.cluster``) and the node agent (``agent.api``), which may not import each
other. Both borrow kopf's login: in a cluster the pod's service account, outside it the kubeconfig, in
tests a test server. Calls run on the event loop over aiohttp (kopf's own HTTP client): no worker threads, no
model classes, the bodies are plain dicts serialized once.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp
import kopf

from . import __version__

Query = dict[str, Any] | list[tuple[str, Any]]


class ApiError(Exception):
    """The API server answered ``status`` >= 400; ``kind`` names the object it was about, when the caller knows."""

    def __init__(self, status: int, message: str, kind: str = "") -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.kind = status, message, kind


class ApiServer:
    user_agent = f"expbuild-isolation/{__version__}"  # what the API server's audit log names as the client

    def __init__(self, server: str, *, headers: dict[str, str] | None = None,
                 ssl_context: ssl.SSLContext | bool | None = None, proxy: str | None = None,
                 trust_env: bool = False) -> None:
        self.server = server.rstrip("/")
        self._headers = headers or {}
        self._ssl = ssl_context
        self._proxy, self._trust_env = proxy, trust_env
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_connection(cls, info: kopf.ConnectionInfo) -> Any:
        """From what a kopf login handler returns (``kopf.login_via_client`` in production).

        The TLS context, the Authorization header and the proxy are made by ``kopf.ConnectionInfo`` itself, as
        for kopf's own session: the operator's calls and kopf's watches can never disagree about credentials,
        and a key given as data (a kubeconfig's ``client-key-data``) sits in a file only while the context
        loads it.
        """
        return cls(info.server, headers=info.as_http_headers(), ssl_context=info.as_ssl_context(),
                   proxy=info.proxy_url, trust_env=info.trust_env)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        """The session, made on first use (it belongs to the running event loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                                  headers={"User-Agent": self.user_agent},
                                                  proxy=self._proxy, trust_env=self._trust_env)
        return self._session

    async def call(self, method: str, path: str, *, body: Any = None, query: Query | None = None,
                   content_type: str = "application/json", raw: bool = False) -> Any:
        """The decoded JSON answer ({} for an empty one), or the bytes with ``raw``; ``ApiError`` for >= 400."""
        headers = {"Accept": "application/json", "Content-Type": content_type, "User-Agent": self.user_agent,
                   **self._headers}
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        async with self._client().request(method, self.server + path, data=data, params=query, headers=headers,
                                          ssl=self._ssl) as response:
            payload = await response.read()
            if response.status >= 400:
                raise ApiError(response.status, refusal_message(payload))
        if raw:
            return payload
        return json.loads(payload) if payload else {}


def refusal_message(payload: bytes) -> str:
    """What a refusal says: the Status object's message, else the start of whatever came back (a proxy's page)."""
    try:
        data = json.loads(payload)
    except ValueError:
        return payload.decode(errors="replace")[:500]
    return str(data.get("message", "")) if isinstance(data, dict) else str(data)[:500]


def error_message(data: Any) -> str:
    """The message of an already decoded Status (a watch's ERROR event)."""
    return str(data.get("message", "")) if isinstance(data, dict) else str(data)[:500]
