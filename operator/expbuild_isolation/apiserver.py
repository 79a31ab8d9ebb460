"""One asynchronous HTTP connection to the Kubernetes API server, with the credentials of a ``kopf.ConnectionInfo``.

Shared by the operator (``controller.cluster``) and the node agent (``agent.api``), which may not import each
other. Both log in through ``login``: in a cluster the pod's service account, outside it the kubeconfig (in
tests, a test server's ``kopf.ConnectionInfo``). Calls run on the event loop over aiohttp (kopf's own HTTP client): no worker threads, no
model classes, the bodies are plain dicts serialized once.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import yaml

from . import __version__

Query = dict[str, Any] | list[tuple[str, Any]]
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def login(*, settings: kopf.OperatorSettings | None = None, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """The credentials of the operator and the agent, without the ``kubernetes`` client library where it can.

    In a pod, its service account: the token and CA of ``SERVICE_ACCOUNT``, the API server at
    ``KUBERNETES_SERVICE_HOST``:``KUBERNETES_SERVICE_PORT`` (as client-go finds it). Outside, the kubeconfig
    (``KUBECONFIG`` or ``~/.kube/config``) read by kopf: certificates, tokens and basic credentials, inline or
    in files. A kubeconfig user that gets its credentials otherwise (an ``exec`` plugin, a ``tokenFile``) needs
    the client library, which is used only then (``pip install kubernetes``).

    Why: kopf imports the client library's ~900 model modules whenever it is installed, 33 MiB of each
    operator and agent process that nothing of ours uses; the image does not install it.
    """
    settings = settings or kopf.OperatorSettings()
    info = in_cluster(settings)
    if info is not None:
        return info
    try:
        info = kopf.login_with_kubeconfig(settings=settings, **kwargs)
    except (OSError, KeyError, TypeError, AttributeError, ValueError, yaml.YAMLError) as exc:
        raise kopf.LoginError(f"the kubeconfig ({os.environ.get('KUBECONFIG') or '~/.kube/config'}) cannot be "
                              f"used: {type(exc).__name__}: {exc}") from None
    if info is None or info.token or info.certificate_path or info.certificate_data or info.username:
        return info
    try:
        import kubernetes.config  # noqa: F401  (only to know whether it is there)
    except ImportError:
        raise kopf.LoginError(
            "the kubeconfig's user has no token, client certificate or password of its own (an exec plugin or "
            "a tokenFile gives them): install the kubernetes client library to use it (pip install kubernetes)"
        ) from None
    return kopf.login_via_client(settings=settings, **kwargs)


def in_cluster(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    """The pod's service account, or None outside a pod."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    token = SERVICE_ACCOUNT / "token"
    if not host or not port or not token.is_file():
        return None
    namespace, ca = SERVICE_ACCOUNT / "namespace", SERVICE_ACCOUNT / "ca.crt"
    return kopf.ConnectionInfo(
        server=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}",
        ca_path=str(ca) if ca.is_file() else None, token=token.read_text().strip() or None,
        default_namespace=(namespace.read_text().strip() or None) if namespace.is_file() else None,
        trust_env=settings.networking.trust_env)


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
        """From what a kopf login handler returns (``login`` in production).

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
