"""Image signatures in cosign's key-based format, verified offline against configured public keys. Pure.

What is checked is what cosign signs (its signature specification, ``specs/SIGNATURE_SPEC.md`` in the
cosign repository, and the "simple signing" payload of containers/image's ``containers-signature.5``):

- the *payload*: JSON whose ``critical.image.docker-manifest-digest`` names the image's manifest digest,
  ``critical.identity.docker-reference`` its repository and ``critical.type`` is
  ``cosign container image signature`` (``optional`` is free-form and ignored);
- the *signature*: ECDSA P-256 over the SHA-256 of the exact payload bytes, ASN.1 DER, base64 (what
  ``cosign sign --key`` stores and ``cosign sign-blob --key`` prints);
- the *key*: a PEM ``PUBLIC KEY`` (``cosign.pub`` from ``cosign generate-key-pair``).

A signature names a digest, so only an image pinned by digest (``name@sha256:<64 hex>``) can be verified;
the engine then runs exactly that content. No Fulcio certificate, Rekor entry or network is involved: the
trust is the administrator's list of keys. The ``sigstore`` package cannot do this (it verifies only
bundles with Fulcio certificates and Rekor proofs), hence this module on ``cryptography``.

Where a signature comes from is the caller's business (``Bundle``): the task's annotations
(``from_annotations``) everywhere, and files in the worker's signature directory locally
(``worker/policy.py``). A signature cannot be forged without the private key, so a tenant may supply it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SIGNATURE_ANNOTATION = "expbuild.io/image-signature"
PAYLOAD_ANNOTATION = "expbuild.io/image-signature-payload"
COSIGN_TYPE = "cosign container image signature"
DIGEST_SEPARATOR = "@sha256:"
# A DER ECDSA P-256 signature is at most 72 bytes; cosign's payloads are a few hundred bytes. The bounds keep
# a hostile annotation from costing more than a glance.
MAX_SIGNATURE_CHARS = 1024
MAX_PAYLOAD_BYTES = 64 * 1024
NO_SIGNATURE = (f"no signature: the task needs both annotations {SIGNATURE_ANNOTATION} and "
                f"{PAYLOAD_ANNOTATION} (base64)")
UNPINNED = "signatures are verified for a digest: pin the image as name@sha256:<64 hex digits>"


class UnusableKey(ValueError):
    """A configured public key that cannot be used (not PEM, not ECDSA P-256)."""


@dataclass(frozen=True)
class Bundle:
    """A signature and the payload it signs, as found; ``unreadable`` says why they could not be decoded."""

    signature: bytes = b""   # DER
    payload: bytes = b""     # the exact bytes that were signed
    source: str = "the task's annotations"
    unreadable: str = ""


def decode_signature(text: str, source: str) -> bytes | str:
    """cosign's base64 signature as bytes, or why it is not one."""
    text = "".join(text.split())
    if len(text) > MAX_SIGNATURE_CHARS:
        return f"{source}: the signature is {len(text)} characters, more than an ECDSA signature can be"
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return f"{source}: the signature is not base64"


def from_annotations(annotations: Mapping[str, str]) -> Bundle | None:
    """The bundle a task carries in its annotations, None when it carries none (both are needed)."""
    signature, payload = annotations.get(SIGNATURE_ANNOTATION), annotations.get(PAYLOAD_ANNOTATION)
    if signature is None or payload is None:
        return None
    source = "the task's annotations"
    decoded = decode_signature(signature, f"annotation {SIGNATURE_ANNOTATION}")
    if isinstance(decoded, str):
        return Bundle(source=source, unreadable=decoded)
    payload = "".join(payload.split())
    if len(payload) > MAX_PAYLOAD_BYTES * 4 // 3 + 4:
        return Bundle(source=source, unreadable=f"annotation {PAYLOAD_ANNOTATION} is larger than "
                                                f"{MAX_PAYLOAD_BYTES} bytes decoded")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return Bundle(source=source, unreadable=f"annotation {PAYLOAD_ANNOTATION} is not base64")
    return Bundle(signature=decoded, payload=raw, source=source)


@functools.lru_cache(maxsize=256)
def public_key(pem: str) -> ec.EllipticCurvePublicKey:
    """The ECDSA P-256 key of a PEM ``PUBLIC KEY`` (cached: the operator checks every task against it)."""
    try:
        key = serialization.load_pem_public_key(pem.strip().encode())
    except (ValueError, TypeError, UnicodeError):
        raise UnusableKey("not a PEM public key (expected what cosign.pub holds: -----BEGIN PUBLIC KEY-----, "
                          "base64, -----END PUBLIC KEY-----)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        kind = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__.lstrip("_")
        raise UnusableKey(f"a {kind} key; only ECDSA P-256 keys are accepted (cosign generate-key-pair)")
    return key


def digest_of(image: str) -> str | None:
    """``sha256:<hex>`` of an image pinned by digest, else None."""
    _, sep, digest = image.rpartition(DIGEST_SEPARATOR)
    if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        return None
    return f"sha256:{digest}"


def repository(reference: str) -> str:
    """The repository of an image reference, spelled in full the way cosign writes it in a payload.

    Docker's rules: a first component with a '.' or ':' or equal to ``localhost`` is a registry, else the
    registry is Docker Hub (``index.docker.io``), where a one-component name lives under ``library/``.
    Tag and digest are dropped: ``busybox:1.36`` is ``index.docker.io/library/busybox``.
    """
    name = reference.partition("@")[0]
    head, slash, last = name.rpartition("/")
    name = f"{head}{slash}{last.partition(':')[0]}"
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = "index.docker.io", name
    if registry == "docker.io":
        registry = "index.docker.io"
    if registry == "index.docker.io" and "/" not in path:
        path = f"library/{path}"
    return f"{registry}/{path}"


def signer(bundle: Bundle, publishers: Sequence[tuple[str, str]]) -> str | None:
    """The name of the first publisher (name, PEM) whose key verifies the bundle's signature, else None."""
    for name, pem in publishers:
        try:
            public_key(pem).verify(bundle.signature, bundle.payload, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, UnusableKey):
            continue
        return name
    return None


def _claims(payload: bytes) -> tuple[str, str, str] | str:
    """(type, digest, repository) of a simple-signing payload, or what is wrong with it."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return "it is not JSON"
    critical = doc.get("critical") if isinstance(doc, dict) else None
    if not isinstance(critical, dict):
        return "it has no critical section"
    image, identity = critical.get("image"), critical.get("identity")
    digest = image.get("docker-manifest-digest") if isinstance(image, dict) else None
    reference = identity.get("docker-reference") if isinstance(identity, dict) else None
    kind = critical.get("type")
    if not all(isinstance(v, str) for v in (kind, digest, reference)):
        return "critical.type, critical.image.docker-manifest-digest and critical.identity.docker-reference " \
               "must all be strings"
    return kind, digest, reference  # type: ignore[return-value]


def distrust(image: str, bundle: Bundle | None, publishers: Sequence[tuple[str, str]],
             missing: str = NO_SIGNATURE) -> str | None:
    """Why ``image`` is not signed by one of ``publishers`` (name, PEM), or None when it is.

    The signature is checked before the payload is believed: a payload nobody trusted signed says nothing.
    """
    digest = digest_of(image)
    if digest is None:
        return UNPINNED
    if bundle is None:
        return missing
    if bundle.unreadable:
        return f"unreadable signature: {bundle.unreadable}"
    if len(bundle.payload) > MAX_PAYLOAD_BYTES:
        return f"unreadable signature: the payload from {bundle.source} is larger than {MAX_PAYLOAD_BYTES} bytes"
    names = ", ".join(name for name, _ in publishers) or "none"
    who = signer(bundle, publishers)
    if who is None:
        return f"bad signature: the signature from {bundle.source} does not verify with the key of any trusted " \
               f"publisher ({names})"
    claims = _claims(bundle.payload)
    if isinstance(claims, str):
        return f"the payload signed by {who} is not a cosign simple-signing payload: {claims}"
    kind, signed_digest, reference = claims
    if kind != COSIGN_TYPE:
        return f"the payload signed by {who} is of type {kind[:80]!r}, not {COSIGN_TYPE!r}"
    if signed_digest != digest:
        return f"the payload signed by {who} is for digest {signed_digest[:80]}, not {digest}"
    if repository(reference) != repository(image):
        return f"the payload signed by {who} is for repository {repository(reference)[:200]}, " \
               f"not {repository(image)}"
    return None
