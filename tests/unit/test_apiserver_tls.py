"""The operator's and the agent's transport against a real TLS server, with the credentials a kubeconfig holds.

Kind clusters and most kubeconfigs give the CA, the client certificate and its key as base64 data; in a pod the
service account gives a CA file and a token. ``ApiServer.from_connection`` must present the client certificate,
verify the server against the given CA (and fail against another one: the positive control that verification is
on), send the token or basic credentials, and leave no key behind in a temporary file.
"""

from __future__ import annotations

import tempfile

import aiohttp
import kopf
import pytest
from aiohttp import web

from expbuild_isolation.agent.api import AgentApi
from expbuild_isolation.controller.cluster import Cluster

from .tls import b64, key_pem, pem, version

CLIENTS = [Cluster, AgentApi]


@pytest.mark.parametrize("cls", CLIENTS, ids=lambda c: c.__name__)
async def test_kubeconfig_data_credentials_present_the_client_certificate(apiserver, cls, tmp_path, monkeypatch):
    pki, url, seen = apiserver
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    info = kopf.ConnectionInfo(server=url, ca_data=b64(pem(pki.ca)), certificate_data=b64(pem(pki.client)),
                               private_key_data=b64(key_pem(pki.client_key)))
    assert (await version(cls.from_connection(info)))["gitVersion"] == "v1.36.0"
    assert seen[-1]["client"] == "system:expbuild-operator"
    assert seen[-1]["user_agent"].startswith("expbuild-isolation-")
    assert list(scratch.iterdir()) == [], "the key given as data was left in a temporary file"


@pytest.mark.parametrize("cls", CLIENTS, ids=lambda c: c.__name__)
async def test_a_service_account_token_and_ca_file_are_used(apiserver, cls):
    pki, url, seen = apiserver
    info = kopf.ConnectionInfo(server=url, ca_path=str(pki.ca_file), token="sa-token")
    await version(cls.from_connection(info))
    assert seen[-1] == {"client": None, "authorization": "Bearer sa-token", "user_agent": seen[-1]["user_agent"]}


@pytest.mark.parametrize("cls", CLIENTS, ids=lambda c: c.__name__)
async def test_basic_credentials_are_sent(apiserver, cls):
    pki, url, seen = apiserver
    info = kopf.ConnectionInfo(server=url, ca_path=str(pki.ca_file), username="admin", password="s3cret")
    await version(cls.from_connection(info))
    assert seen[-1]["authorization"] == "Basic " + b64(b"admin:s3cret")


@pytest.mark.parametrize("cls", CLIENTS, ids=lambda c: c.__name__)
async def test_a_server_the_ca_did_not_sign_is_refused_unless_insecure(apiserver, cls):
    pki, url, seen = apiserver
    stranger = kopf.ConnectionInfo(server=url, ca_data=b64(pem(pki.stranger)), token="t")
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await version(cls.from_connection(stranger))
    assert seen == []  # the request never reached the server
    insecure = kopf.ConnectionInfo(server=url, ca_data=b64(pem(pki.stranger)), token="t", insecure=True)
    await version(cls.from_connection(insecure))
    assert seen[-1]["authorization"] == "Bearer t"


@pytest.fixture
async def rotating():
    """A plain-HTTP server that accepts only the token ``fresh`` (the one before it was rotated away)."""
    seen: list[str] = []

    async def version(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != "Bearer fresh":
            return web.json_response({"kind": "Status", "code": 401, "message": "Unauthorized"}, status=401)
        return web.json_response({"gitVersion": "v1.36.0"})

    app = web.Application()
    app.router.add_get("/version", version)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", seen
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("cls", CLIENTS, ids=lambda c: c.__name__)
async def test_a_401_logs_in_again_once_for_many_requests_and_the_requests_go_through(rotating, cls):
    import asyncio
    url, seen = rotating
    logins: list[str] = []

    async def relogin() -> kopf.ConnectionInfo:
        logins.append("again")
        await asyncio.sleep(0.05)  # (the others' 401s arrive meanwhile)
        return kopf.ConnectionInfo(server=url, token="fresh")

    client = cls.from_connection(kopf.ConnectionInfo(server=url, token="expired"), relogin=relogin)
    try:
        answers = await asyncio.gather(*(client.call("GET", "/version") for _ in range(10)))
    finally:
        await client.close()
    assert [a["gitVersion"] for a in answers] == ["v1.36.0"] * 10
    assert logins == ["again"]
    assert seen.count("Bearer expired") == 10 and seen.count("Bearer fresh") == 10


@pytest.mark.parametrize("cls", CLIENTS, ids=lambda c: c.__name__)
async def test_credentials_still_refused_after_logging_in_again_are_an_error_not_a_loop(rotating, cls):
    from expbuild_isolation.apiserver import ApiError
    url, seen = rotating
    stale = kopf.ConnectionInfo(server=url, token="expired")
    client = cls.from_connection(stale, relogin=lambda: stale)
    with pytest.raises(ApiError) as refused:
        await version(client)
    assert refused.value.status == 401 and seen == ["Bearer expired"] * 2
    without = cls.from_connection(stale)  # no way to log in again: the first 401 is the answer
    with pytest.raises(ApiError):
        await version(without)
    assert len(seen) == 3
