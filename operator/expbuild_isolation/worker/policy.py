"""The worker file's ``[policy]``: the same knobs as an ExecutionPolicy, for every task this worker runs.

``expbuild-isolation run`` and the node agent (both through ``local.run_task``) judge each task against it
with ``api.judge`` before anything is placed in a workspace: a violation ends the task in
Error/PolicyViolation (``run`` exits 125), an image without a trusted signature in Error/UntrustedImage, a
``below_minimum = "Raise"`` floor raises the task's minimum.
The REAPI worker judges each action as the task it amounts to through the same call (``worker.reapi.policy``).

Image signatures (``[policy.images] verify_signature``) come from the task's annotations, as in a cluster;
failing that, from the directory ``[policy.images] signatures`` names: ``sha256-<hex>.sig`` (the base64
signature, as ``cosign sign-blob`` prints it) and ``sha256-<hex>.payload.json`` (the signed payload, as
``cosign generate`` prints it) for the image's digest, the name cosign gives a signature in a registry.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..api import signatures
from ..api.judge import Judgement, judge
from ..api.task import ExecutionTask
from .config import WorkerConfig

NAME = "[policy]"
BY = "the worker config's"


def local_judgement(task: ExecutionTask, config: WorkerConfig) -> Judgement | None:
    """The judgement of the worker file's ``[policy]``, or None when it has none."""
    if config.policy is None:
        return None
    bundle, missing = None, signatures.NO_SIGNATURE
    directory = config.policy.images.signatures
    digest = signatures.digest_of(task.spec.image or "")
    if directory is not None and digest is not None and config.policy.images.verify_signature \
            and signatures.from_annotations(task.metadata.annotations) is None:
        bundle, missing = signature_files(Path(directory), digest)
    verdict = judge(task, [config.policy.as_policy(NAME)], {}, bundle=bundle, missing=missing)
    return dataclasses.replace(verdict, by=BY,
                               violations=tuple(dataclasses.replace(v, by=BY) for v in verdict.violations))


def signature_files(directory: Path, digest: str) -> tuple[signatures.Bundle | None, str]:
    """The bundle kept in ``directory`` for ``digest``, or None and where it was looked for."""
    stem = digest.replace(":", "-")
    signature_path, payload_path = directory / f"{stem}.sig", directory / f"{stem}.payload.json"
    missing = (f"{signatures.NO_SIGNATURE}, or the files {signature_path} and {payload_path.name} "
               f"(the worker config's [policy.images] signatures)")
    try:
        signature = _read(signature_path, signatures.MAX_SIGNATURE_CHARS)
        payload = _read(payload_path, signatures.MAX_PAYLOAD_BYTES)
    except FileNotFoundError:
        return None, missing
    except OSError as exc:
        source = f"{directory}/{stem}.*"
        return signatures.Bundle(source=source, unreadable=f"{source}: {exc.strerror or exc}"), missing
    decoded = signatures.decode_signature(signature.decode("ascii", "replace"), str(signature_path))
    if isinstance(decoded, str):
        return signatures.Bundle(source=str(signature_path), unreadable=decoded), missing
    return signatures.Bundle(signature=decoded, payload=payload, source=str(signature_path)), missing


def _read(path: Path, limit: int) -> bytes:
    """At most ``limit`` + 1 bytes of a regular file (a FIFO or a device there must not hang the worker)."""
    if not path.is_file():
        raise FileNotFoundError(path) if not path.exists() else OSError(f"{path} is not a regular file")
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{path} is larger than {limit} bytes")
    return data
