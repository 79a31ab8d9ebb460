"""Image signatures: the verifier (cosign's key-based format), the policy knobs and the judge. Pure.

Keys are generated here (``signature_cases``); what is refused must be refused for the reason a user can act
on, and the same signature must pass where it should (the control of every refusal).
"""

from __future__ import annotations

import base64
import os
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from expbuild_isolation.api import signatures
from expbuild_isolation.api.crd import build_policy_crd
from expbuild_isolation.api.judge import judge
from expbuild_isolation.api.policy import ExecutionPolicy
from expbuild_isolation.api.task import ExecutionTask
from expbuild_isolation.worker.config import ConfigError, parse_worker_config
from expbuild_isolation.worker.policy import local_judgement
from pydantic import ValidationError

from .manifests import task as task_manifest
from .signature_cases import Publisher, annotations, cases, payload, verifying
from .test_crd import ApiServer

REPOSITORY = "registry.local/ci/app"
DIGEST = "sha256:" + "5e" * 32
IMAGE = f"{REPOSITORY}@{DIGEST}"
TRUSTED, OTHER = Publisher("ci-release"), Publisher("someone-else")
CASES = cases(REPOSITORY, DIGEST, TRUSTED, OTHER)


def policy(name: str = "signed", **spec) -> ExecutionPolicy:
    return ExecutionPolicy.model_validate({"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionPolicy",
                                           "metadata": {"name": name}, "spec": spec})


def task(image: str, notes: dict[str, str] | None = None) -> ExecutionTask:
    manifest = task_manifest(image=image)
    manifest["metadata"]["annotations"] = notes or {}
    return ExecutionTask.model_validate(manifest)


# --- the verifier ----------------------------------------------------------------------------------------------


def test_a_signature_by_a_trusted_key_over_the_images_digest_verifies():
    bundle = signatures.from_annotations(CASES["signed"].annotations)
    assert signatures.distrust(IMAGE, bundle, [(TRUSTED.name, TRUSTED.pem)]) is None
    # the control of "other-key": the same signature, and the signer's key is not listed
    assert signatures.distrust(IMAGE, bundle, [(OTHER.name, OTHER.pem)]).startswith("bad signature")


@pytest.mark.parametrize("case", [c for c in CASES if c != "signed"])
def test_each_untrusted_image_is_refused_saying_why(case):
    bundle = signatures.from_annotations(CASES[case].annotations)
    problem = signatures.distrust(CASES[case].image, bundle, [(TRUSTED.name, TRUSTED.pem)])
    assert problem is not None
    for words in CASES[case].words:
        assert words in problem, (case, problem)


def test_one_changed_byte_of_the_payload_breaks_the_signature():
    good = payload(REPOSITORY, DIGEST)
    signature = TRUSTED.sign(good)
    tampered = good.replace(b"ci/app", b"ci/apq")
    bundle = signatures.from_annotations(annotations(signature, tampered))
    assert signatures.distrust(f"registry.local/ci/apq@{DIGEST}", bundle,
                               [(TRUSTED.name, TRUSTED.pem)]).startswith("bad signature")


def test_the_signature_is_checked_before_the_payload_is_believed():
    unsigned_nonsense = signatures.Bundle(signature=b"\x30\x06\x02\x01\x01\x02\x01\x01", payload=b"not json")
    assert signatures.distrust(IMAGE, unsigned_nonsense, [(TRUSTED.name, TRUSTED.pem)]).startswith("bad signature")


@pytest.mark.parametrize("signed, words", [
    (b"not json", "not JSON"),
    (b'{"critical": {"image": {}}}', "must all be strings"),
    (b"[1, 2]", "no critical section"),
    (payload(REPOSITORY, DIGEST, kind="atomic container signature"), "of type 'atomic container signature'"),
])
def test_a_signed_payload_that_is_not_cosigns_is_refused(signed, words):
    bundle = signatures.from_annotations(annotations(TRUSTED.sign(signed), signed))
    problem = signatures.distrust(IMAGE, bundle, [(TRUSTED.name, TRUSTED.pem)])
    assert problem is not None and words in problem and "signed by ci-release" in problem


@pytest.mark.parametrize("notes, words", [
    ({signatures.SIGNATURE_ANNOTATION: "%%%", signatures.PAYLOAD_ANNOTATION: "e30="}, "signature is not base64"),
    ({signatures.SIGNATURE_ANNOTATION: "MEUC", signatures.PAYLOAD_ANNOTATION: "{}"}, "payload is not base64"),
    ({signatures.SIGNATURE_ANNOTATION: "A" * 5000, signatures.PAYLOAD_ANNOTATION: "e30="},
     "more than an ECDSA signature can be"),
    ({signatures.SIGNATURE_ANNOTATION: "MEUC", signatures.PAYLOAD_ANNOTATION: "A" * 100_000}, "larger than"),
])
def test_unreadable_annotations_are_named(notes, words):
    bundle = signatures.from_annotations(notes)
    problem = signatures.distrust(IMAGE, bundle, [(TRUSTED.name, TRUSTED.pem)])
    assert problem is not None and problem.startswith("unreadable signature") and words in problem


def test_one_annotation_alone_is_no_signature():
    assert signatures.from_annotations({signatures.SIGNATURE_ANNOTATION: "MEUC"}) is None
    assert signatures.distrust(IMAGE, None, []) == signatures.NO_SIGNATURE


@pytest.mark.parametrize("reference, repository", [
    ("busybox", "index.docker.io/library/busybox"),
    ("busybox:1.36", "index.docker.io/library/busybox"),
    ("docker.io/library/busybox@sha256:" + "a" * 64, "index.docker.io/library/busybox"),
    ("index.docker.io/team/tool:1", "index.docker.io/team/tool"),
    ("team/tool", "index.docker.io/team/tool"),
    ("localhost/expbuild-busybox:latest", "localhost/expbuild-busybox"),
    ("localhost:5000/ci/app:t@sha256:" + "a" * 64, "localhost:5000/ci/app"),
    ("registry.local/ci/app", "registry.local/ci/app"),
])
def test_repositories_are_compared_as_cosign_spells_them(reference, repository):
    assert signatures.repository(reference) == repository


def test_a_payload_naming_the_short_docker_hub_name_matches_the_full_one():
    digest = "sha256:" + "c" * 64
    signed = payload("index.docker.io/library/busybox", digest)
    bundle = signatures.from_annotations(annotations(TRUSTED.sign(signed), signed))
    assert signatures.distrust(f"busybox@{digest}", bundle, [(TRUSTED.name, TRUSTED.pem)]) is None


# --- the policy knobs -------------------------------------------------------------------------------------------


def _pem(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.mark.parametrize("publisher, words", [
    ({"name": "x", "publicKey": "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----"},
     "not a PEM public key"),
    ({"name": "x", "publicKey": _pem(ec.generate_private_key(ec.SECP384R1()))}, "only ECDSA P-256"),
    ({"name": "x", "publicKey": _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))},
     "only ECDSA P-256"),
])
def test_a_key_that_cannot_verify_is_refused_when_the_policy_is_read(publisher, words):
    with pytest.raises(ValidationError) as caught:
        policy(images={"verifySignature": True, "trustedPublishers": [publisher]})
    assert "publicKey" in str(caught.value) and words in str(caught.value)


@pytest.fixture(scope="module")
def policy_api_server():
    return ApiServer(build_policy_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("images, words", [
    ({"verifySignature": True}, "verifySignature needs at least one trustedPublishers entry"),
    ({"verifySignature": True, "trustedPublishers": []}, "verifySignature needs at least one trustedPublishers"),
    ({"trustedPublishers": [TRUSTED.trusted()]}, "trustedPublishers are used only with verifySignature: true"),
])
def test_verification_and_publishers_go_together_in_the_models_and_the_api_server(policy_api_server, images, words):
    doc = {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionPolicy", "metadata": {"name": "p"},
           "spec": {"images": images}}
    with pytest.raises(ValidationError, match=words):
        ExecutionPolicy.model_validate(doc)
    assert any(words in error for error in policy_api_server.admit(doc)), policy_api_server.admit(doc)
    good = {**doc, "spec": verifying(TRUSTED)}
    assert policy_api_server.admit(good) == [] and ExecutionPolicy.model_validate(good)


# --- the judge --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_the_judge_refuses_untrusted_images_with_their_own_reason(case):
    verdict = judge(task(CASES[case].image, CASES[case].annotations), [policy(**verifying(TRUSTED))], {})
    if case == "signed":
        assert verdict.allowed, verdict.refusal()
        return
    assert verdict.reason == "UntrustedImage", verdict
    message = verdict.refusal()
    assert message.startswith(f"spec.image: {CASES[case].image!r} is not trusted by ExecutionPolicy signed (")
    assert all(words in message for words in CASES[case].words), message
    assert judge(task(CASES[case].image, CASES[case].annotations), [policy()], {}).allowed  # no knob: the control


def test_verification_is_off_by_default_and_a_task_without_an_image_is_not_judged():
    assert judge(task(CASES["unsigned"].image), [policy(images={"requireDigest": True})], {}).allowed
    bare = ExecutionTask.model_validate(task_manifest())
    assert judge(bare, [policy(**verifying(TRUSTED))], {}).allowed


def test_several_verifying_policies_each_need_a_publisher_they_trust():
    signed = CASES["signed"]
    both = [policy("team", **verifying(TRUSTED)), policy("security", **verifying(OTHER))]
    verdict = judge(task(signed.image, signed.annotations), both, {})
    assert [v.policy for v in verdict.violations] == ["security"] and verdict.reason == "UntrustedImage"
    assert "someone-else" in verdict.refusal()
    trusting_both = [policy("team", **verifying(TRUSTED)), policy("security", **verifying(OTHER, TRUSTED))]
    assert judge(task(signed.image, signed.annotations), trusting_both, {}).allowed


def test_an_untrusted_image_beside_another_violation_is_a_policy_violation():
    unsigned = CASES["unsigned"]
    governing = [policy(**verifying(TRUSTED)), policy("images", images={"allowed": ["elsewhere/*"]})]
    verdict = judge(task(unsigned.image, unsigned.annotations), governing, {})
    assert verdict.reason == "PolicyViolation" and len(verdict.violations) == 2
    assert "no signature" in verdict.refusal() and "allowed: elsewhere/*" in verdict.refusal()


# --- the worker file's [policy] ---------------------------------------------------------------------------------


def worker(tmp_path, **images):
    return parse_worker_config({"work_dir": str(tmp_path / "work"), "policy": {"images": images}},
                               source="worker.toml")


def test_the_worker_file_takes_the_seeds_knobs_and_refuses_a_bad_key(tmp_path):
    config = worker(tmp_path, verify_signature=True, trusted_publishers=[{"name": "ci", "public_key": TRUSTED.pem}])
    assert config.policy.images.verify_signature
    with pytest.raises(ConfigError, match=r"worker.toml: .*public_key.*not a PEM public key"):
        worker(tmp_path, verify_signature=True, trusted_publishers=[{"name": "ci", "public_key": "-----BEGIN PUBLIC "
                                                                                                "KEY-----\nxx"}])
    with pytest.raises(ConfigError, match="verifySignature needs at least one trustedPublishers"):
        worker(tmp_path, verify_signature=True)


def test_the_worker_reads_signatures_kept_beside_the_images(tmp_path):
    """sha256-<hex>.sig and sha256-<hex>.payload.json in [policy.images] signatures, for a task without
    annotations; the annotations still come first."""
    store = tmp_path / "signatures"
    store.mkdir()
    config = worker(tmp_path, verify_signature=True, signatures=str(store),
                    trusted_publishers=[{"name": "ci-release", "public_key": TRUSTED.pem}])
    unsigned = task(IMAGE)
    verdict = local_judgement(unsigned, config)
    assert verdict.reason == "UntrustedImage" and f"{store}/sha256-{'5e' * 32}.sig" in verdict.refusal()
    assert "the worker config's [policy]" in verdict.refusal()
    good = payload(REPOSITORY, DIGEST)
    (store / f"sha256-{'5e' * 32}.payload.json").write_bytes(good)
    (store / f"sha256-{'5e' * 32}.sig").write_text(OTHER.sign(good) + "\n")
    assert local_judgement(unsigned, config).refusal().count("bad signature") == 1
    (store / f"sha256-{'5e' * 32}.sig").write_text(TRUSTED.sign(good) + "\n")  # as cosign sign-blob prints it
    assert local_judgement(unsigned, config).allowed
    wrongly_annotated = task(IMAGE, CASES["other-key"].annotations)
    assert "bad signature" in local_judgement(wrongly_annotated, config).refusal()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_in_the_signature_directory_does_not_hang_the_worker(tmp_path):
    store = tmp_path / "signatures"
    store.mkdir()
    os.mkfifo(store / f"sha256-{'5e' * 32}.sig")
    (store / f"sha256-{'5e' * 32}.payload.json").write_bytes(b"{}")
    config = worker(tmp_path, verify_signature=True, signatures=str(store),
                    trusted_publishers=[{"name": "ci-release", "public_key": TRUSTED.pem}])
    verdict = local_judgement(task(IMAGE), config)
    assert "not a regular file" in verdict.refusal()


def test_signature_annotations_round_trip_through_base64_as_a_shell_would_make_them(tmp_path):
    """What a user types: base64 -w0 of cosign's payload file and the signature text as printed."""
    good = payload(REPOSITORY, DIGEST)
    (tmp_path / "payload.json").write_bytes(good)
    encoded = subprocess.run(["base64", "-w0", str(tmp_path / "payload.json")], capture_output=True, text=True,
                             check=True).stdout
    assert base64.b64decode(encoded) == good
    notes = {signatures.SIGNATURE_ANNOTATION: TRUSTED.sign(good) + "\n", signatures.PAYLOAD_ANNOTATION: encoded}
    assert judge(task(IMAGE, notes), [policy(**verifying(TRUSTED))], {}).allowed

