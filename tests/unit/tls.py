"""A certificate authority, certificates and the calls the TLS tests share (the server is ``conftest.apiserver``)."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def issue(name: str, key: Any, issuer: tuple[x509.Name, Any] | None, *, ca: bool = False,
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
        self.ca = issue("test-cluster-ca", self.ca_key, None, ca=True)
        issuer = (self.ca.subject, self.ca_key)
        server_key = ec.generate_private_key(ec.SECP256R1())
        self.client_key = ec.generate_private_key(ec.SECP256R1())
        self.client = issue("system:expbuild-operator", self.client_key, issuer)
        stranger_key = ec.generate_private_key(ec.SECP256R1())
        self.stranger = issue("some-other-ca", stranger_key, None, ca=True)
        self.ca_file = where / "ca.crt"
        self.ca_file.write_bytes(pem(self.ca))
        (where / "server.crt").write_bytes(pem(issue("apiserver", server_key, issuer, ip="127.0.0.1")))
        (where / "server.key").write_bytes(key_pem(server_key))
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca_file))
        self.server_context.load_cert_chain(where / "server.crt", where / "server.key")
        self.server_context.verify_mode = ssl.CERT_OPTIONAL  # a client certificate, when given, must be ours


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def version(client: Any) -> dict[str, Any]:
    try:
        return await client.call("GET", "/version")
    finally:
        await client.close()
