"""The operator's and the agent's transport against a real TLS server, with the credentials a kubeconfig holds.

Kind clusters and most kubeconfigs give the CA, the client certificate and its key as base64 data; in a pod the
service account gives a CA file and a token. ``ApiServer.from_connection`` must present the client certificate,
verify the server against the given CA (and fail against another one: the positive control that verification is
on), send the token or basic credentials, and leave no key behind in a temporary file.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import ssl
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from expbuild_isolation.agent.api import AgentApi
from expbuild_isolation.controller.cluster import Cluster

CLIENTS = [Cluster, AgentApi]


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _issue(name: str, key: Any, issuer: tuple[x509.Name, Any] | None, *, ca: bool = False,
           ip: str | None = None) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class Pki:
    """A cluster CA, the API server's certificate for 127.0.0.1, a client certificate, and a stranger CA."""

    def __init__(self, where: Path) -> None:
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = _issue("test-cluster-ca", self.ca_key, None, ca=True)
        issuer = (self.ca.subject, self.ca_key)
        server_key = ec.generate_private_key(ec.SECP256R1())
        self.client_key = ec.generate_private_key(ec.SECP256R1())
        self.client = _issue("system:expbuild-operator", self.client_key, issuer)
        stranger_key = ec.generate_private_key(ec.SECP256R1())
        self.stranger = _issue("some-other-ca", stranger_key, None, ca=True)
        self.ca_file = where / "ca.crt"
        self.ca_file.write_bytes(_pem(self.ca))
        (where / "server.crt").write_bytes(_pem(_issue("apiserver", server_key, issuer, ip="127.0.0.1")))
        (where / "server.key").write_bytes(_key_pem(server_key))
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca_file))
        self.server_context.load_cert_chain(where / "server.crt", where / "server.key")
        self.server_context.verify_mode = ssl.CERT_OPTIONAL  # a client certificate, when given, must be ours


@pytest.fixture
async def apiserver(tmp_path):
    """An HTTPS server answering like the API server's /version, echoing what it saw of the client."""
    pki = Pki(tmp_path)
    seen: list[dict[str, Any]] = []

    async def version(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(item[0] for item in (peer or {}).get("subject", ()))
        seen.append({"client": subject.get("commonName"), "authorization": request.headers.get("Authorization"),
                     "user_agent": request.headers.get("User-Agent")})
        return web.json_response({"gitVersion": "v1.36.0"})

    app = web.Application()
    app.router.add_get("/version", version)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield pki, f"https://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _version(client: Any) -> dict[str, Any]:
    try:
        return await client.call("GET", "/version")
    finally:
        await client.close()


@pytest.mark.parametrize("cls", CLIENTS, ids=lambda c: c.__name__)
async def test_kubeconfig_data_credentials_present_the_client_certificate(apiserver, cls, tmp_path, monkeypatch):
    pki, url, seen = apiserver
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    info = kopf.ConnectionInfo(server=url, ca_data=_b64(_pem(pki.ca)), certificate_data=_b64(_pem(pki.client)),
                               private_key_data=_b64(_key_pem(pki.client_key)))
    assert (await _version(cls.from_connection(info)))["gitVersion"] == "v1.36.0"
    assert seen[-1]["client"] == "system:expbuild-operator"
    assert seen[-1]["user_agent"].startswith("expbuild-isolation-")
    assert list(scratch.iterdir()) == [], "the key given as data was left in a temporary file"


@pytest.mark.parametrize("cls", CLIENTS, ids=lambda c: c.__name__)
async def test_a_service_account_token_and_ca_file_are_used(apiserver, cls):
    pki, url, seen = apiserver
    info = kopf.ConnectionInfo(server=url, ca_path=str(pki.ca_file), token="sa-token")
    await _version(cls.from_connection(info))
    assert seen[-1] == {"client": None, "authorization": "Bearer sa-token", "user_agent": seen[-1]["user_agent"]}


@pytest.mark.parametrize("cls", CLIENTS, ids=lambda c: c.__name__)
async def test_basic_credentials_are_sent(apiserver, cls):
    pki, url, seen = apiserver
    info = kopf.ConnectionInfo(server=url, ca_path=str(pki.ca_file), username="admin", password="s3cret")
    await _version(cls.from_connection(info))
    assert seen[-1]["authorization"] == "Basic " + _b64(b"admin:s3cret")


@pytest.mark.parametrize("cls", CLIENTS, ids=lambda c: c.__name__)
async def test_a_server_the_ca_did_not_sign_is_refused_unless_insecure(apiserver, cls):
    pki, url, seen = apiserver
    stranger = kopf.ConnectionInfo(server=url, ca_data=_b64(_pem(pki.stranger)), token="t")
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _version(cls.from_connection(stranger))
    assert seen == []  # the request never reached the server
    insecure = kopf.ConnectionInfo(server=url, ca_data=_b64(_pem(pki.stranger)), token="t", insecure=True)
    await _version(cls.from_connection(insecure))
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
        await _version(client)
    assert refused.value.status == 401 and seen == ["Bearer expired"] * 2
    without = cls.from_connection(stale)  # no way to log in again: the first 401 is the answer
    with pytest.raises(ApiError):
        await _version(without)
    assert len(seen) == 3
