"""Image signatures made here, in cosign's key-based format, and the tasks every enforcer must refuse.

Keys are generated per test run with ``cryptography`` (ECDSA P-256, as ``cosign generate-key-pair``);
payloads are cosign's "simple signing" JSON; signatures are base64 DER over the exact payload bytes. No
cosign-produced fixture is used: producing one needs the cosign binary, which no reachable registry ships.

The judge (tests/unit/test_signatures.py), the operator on KMock (tests/controller/test_signatures.py), the
node agent (tests/agent/test_signatures.py) and ``expbuild-isolation run`` with real Docker
(tests/executors/test_signed_images.py) all use ``cases``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from expbuild_isolation.api.signatures import COSIGN_TYPE, PAYLOAD_ANNOTATION, SIGNATURE_ANNOTATION


@dataclass(frozen=True)
class Publisher:
    name: str
    private: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    @property
    def pem(self) -> str:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def sign(self, payload: bytes) -> str:
        """cosign's signature: base64 of the DER ECDSA signature over SHA-256 of the payload."""
        return base64.b64encode(self.private.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()

    def trusted(self) -> dict:
        return {"name": self.name, "publicKey": self.pem}


def payload(repository: str, digest: str, kind: str = COSIGN_TYPE) -> bytes:
    """The simple-signing payload cosign signs for ``repository`` at ``digest`` (compact, key order as cosign's)."""
    doc = {"critical": {"identity": {"docker-reference": repository}, "image": {"docker-manifest-digest": digest},
                        "type": kind}, "optional": None}
    return json.dumps(doc, separators=(",", ":")).encode()


def annotations(signature: str, signed: bytes) -> dict[str, str]:
    return {SIGNATURE_ANNOTATION: signature, PAYLOAD_ANNOTATION: base64.b64encode(signed).decode()}


def verifying(*publishers: Publisher) -> dict:
    """An ExecutionPolicy's spec that verifies signatures by ``publishers``."""
    return {"images": {"verifySignature": True, "trustedPublishers": [p.trusted() for p in publishers]}}


@dataclass(frozen=True)
class Case:
    image: str
    annotations: dict[str, str]
    words: tuple[str, ...]  # in the refusal; () for the signed task that runs


def cases(repository: str, digest: str, trusted: Publisher, other: Publisher) -> dict[str, Case]:
    """The signed task and the refused ones, for an image ``repository@digest`` (``repository`` as the task
    names it: the payload's identity is what cosign writes for it, the same repository)."""
    pinned = f"{repository}@{digest}"
    good = payload(repository, digest)
    another_digest = "sha256:" + ("0" if digest[-1] != "0" else "1") * 64
    return {
        "signed": Case(pinned, annotations(trusted.sign(good), good), ()),
        "unsigned": Case(pinned, {}, ("no signature", SIGNATURE_ANNOTATION)),
        "other-key": Case(pinned, annotations(other.sign(good), good),
                          ("bad signature", "does not verify with the key of any trusted publisher", trusted.name)),
        "other-digest": Case(pinned, annotations(trusted.sign(payload(repository, another_digest)),
                                                 payload(repository, another_digest)),
                             (f"is for digest {another_digest}, not {digest}",)),
        "other-repository": Case(pinned, annotations(trusted.sign(payload(f"{repository}-evil", digest)),
                                                     payload(f"{repository}-evil", digest)),
                                 ("is for repository", f"{repository}-evil")),
        "unpinned": Case(f"{repository}:latest", annotations(trusted.sign(good), good),
                         ("signatures are verified for a digest", "name@sha256:")),
    }
