"""One asynchronous HTTP connection to the Kubernetes API server, with the credentials of a ``kopf.ConnectionInfo``.

Shared by the operator (``controller.cluster``) and the node agent (``agent.api``), which may not import each
other. Both borrow kopf's login: in a cluster the pod's service account, outside it the kubeconfig, in
tests a test server. Calls run on the event loop over aiohttp (kopf's own HTTP client): no worker threads, no
model classes, the bodies are plain dicts serialized once.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import ssl
from collections.abc import Awaitable, Callable
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


Relogin = Callable[[], "kopf.ConnectionInfo | None | Awaitable[kopf.ConnectionInfo | None]"]


class ApiServer:
    user_agent = f"expbuild-isolation/{__version__}"  # what the API server's audit log names as the client

    def __init__(self, server: str, *, headers: dict[str, str] | None = None,
                 ssl_context: ssl.SSLContext | bool | None = None, proxy: str | None = None,
                 trust_env: bool = False, relogin: Relogin | None = None) -> None:
        self.server = server.rstrip("/")
        self._headers = headers or {}
        self._ssl = ssl_context
        self._proxy, self._trust_env = proxy, trust_env
        self._session: aiohttp.ClientSession | None = None
        self._relogin = relogin
        self._logins = 0  # how many times new credentials were taken (concurrent 401s log in once)
        self._login_lock = asyncio.Lock()

    @classmethod
    def from_connection(cls, info: kopf.ConnectionInfo, *, relogin: Relogin | None = None) -> Any:
        """From what a kopf login handler returns (``kopf.login_via_client`` in production).

        The TLS context, the Authorization header and the proxy are made by ``kopf.ConnectionInfo`` itself, as
        for kopf's own session: the operator's calls and kopf's watches can never disagree about credentials,
        and a key given as data (a kubeconfig's ``client-key-data``) sits in a file only while the context
        loads it. With ``relogin``, a 401 (a service-account token rotated and expired) logs in again through
        it and the request is sent once more.
        """
        return cls(info.server, headers=info.as_http_headers(), ssl_context=info.as_ssl_context(),
                   proxy=info.proxy_url, trust_env=info.trust_env, relogin=relogin)

    async def _login_again(self, logins_seen: int) -> bool:
        """Take fresh credentials from ``relogin``; True when there are newer ones than the refused request had."""
        if self._relogin is None:
            return False
        async with self._login_lock:
            if self._logins != logins_seen:
                return True  # another request's 401 already logged in again
            info = self._relogin()
            info = await info if inspect.isawaitable(info) else info
            if info is None:
                return False
            self.server = info.server.rstrip("/")
            self._headers, self._ssl = info.as_http_headers(), info.as_ssl_context()
            self._proxy, self._trust_env = info.proxy_url, info.trust_env
            old, self._session = self._session, None
            self._logins += 1
        if old is not None:
            await old.close()  # (a watch streaming on it ends, and its caller lists and watches again)
        return True

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
        logins = self._logins
        try:
            return await self._send(method, path, body=body, query=query, content_type=content_type, raw=raw)
        except ApiError as exc:
            if exc.status != 401 or not await self._login_again(logins):
                raise
        return await self._send(method, path, body=body, query=query, content_type=content_type, raw=raw)

    async def _send(self, method: str, path: str, *, body: Any, query: Query | None, content_type: str,
                    raw: bool) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type, **self._headers}
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
        return error_message(json.loads(payload))
    except ValueError:
        return payload.decode(errors="replace")[:500]


def error_message(data: Any) -> str:
    """The message of an already decoded Status (a watch's ERROR event)."""
    return str(data.get("message", "")) if isinstance(data, dict) else str(data)[:500]
