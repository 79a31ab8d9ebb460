"""The REAPI worker obeys its worker file's ``[policy]`` and ``[task_limits]``, as ``run`` and the node agent do.

Each action breaks one knob and is answered FAILED_PRECONDITION with the rule's own words, with no
PreconditionFailure (which Bazel would read as a CAS miss and retry), an audit line and the ``rejected``
counter. That nothing ran is judged from the host: the executors were never asked to run it and the marker
its command would write on the host is absent. The control sends the same action to a worker whose file
allows it: it runs, and on the host executor the marker appears. In process over a real BuildGrid's CAS, and
once end to end through BuildGrid and a ``reapi-worker`` process started with such a worker file.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

import pytest

try:
    from expbuild_isolation.worker.reapi import protos as reapi_protos
except ImportError as exc:
    if os.environ.get("EXPBUILD_REQUIRE_REAPI") == "1":
        raise
    pytest.skip(f"REAPI protos not installed ({exc}); run .ci/setup-reapi.sh", allow_module_level=True)
from expbuild_isolation.api.task import IsolationLevel  # noqa: E402
from expbuild_isolation.executors.config import NamespaceConfig  # noqa: E402
from expbuild_isolation.executors.host import HostExecutor  # noqa: E402
from expbuild_isolation.executors.namespace.executor import NamespaceExecutor  # noqa: E402
from expbuild_isolation.worker.config import parse_worker_config  # noqa: E402
from expbuild_isolation.worker.reapi.cas import LocalCas, RemoteCas, digest_of  # noqa: E402
from expbuild_isolation.worker.reapi.runner import ActionRunner, RunnerSettings  # noqa: E402
from prometheus_client import REGISTRY  # noqa: E402

from tests.agent.conftest import CountingExecutor  # noqa: E402
from tests.unit.signature_cases import Publisher, payload  # noqa: E402

from .stack import ReapiStack, require_tools  # noqa: E402
from .test_missing_blobs import directory, execute, upload  # noqa: E402

re_pb2, grpc, code_pb2 = reapi_protos.re_pb2, reapi_protos.grpc, reapi_protos.code_pb2
pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

# What the host executor can run (it offers isolation Process, no seccomp, the host's network).
ON_THE_HOST = {"isolation": "None", "seccomp": "Unconfined", "network": "full"}
IN_A_SANDBOX: dict[str, str] = {}   # the worker's floor (None), RuntimeDefault, no network: the namespace executor
E2E_RULES = '[policy.images]\nallowed = ["registry.local/*"]\n'

# name: (the worker file's refusing sections, the action's platform properties, reason, the property as named
#        in the message with its value, what the message says is accepted)
REFUSED = {
    "image": ({"policy": {"images": {"allowed": ["registry.local/*"]}}},
              ON_THE_HOST | {"container-image": "docker://docker.io/evil/miner:latest"}, "PolicyViolation",
              "platform property container-image: 'docker.io/evil/miner:latest'", "allowed: registry.local/*"),
    "unpinned-image": ({"policy": {"images": {"require_digest": True}}},
                       ON_THE_HOST | {"container-image": "registry.local/gcc:13"}, "PolicyViolation",
                       "platform property container-image: 'registry.local/gcc:13'", "pinned by digest"),
    "below-the-floor": ({"policy": {"isolation": {"minimum": "Container"}}}, ON_THE_HOST, "PolicyViolation",
                        "platform property isolation: 'None'", "at least Container"),
    "floor-unset": ({"policy": {"isolation": {"minimum": "Container"}}}, {"seccomp": "Unconfined", "network": "full"},
                    "PolicyViolation", "platform property isolation (unset, so the worker file's isolation_minimum)",
                    "at least Container"),
    "raised-floor-meets-unconfined": ({"policy": {"isolation": {"minimum": "Container", "below_minimum": "Raise"}}},
                                      ON_THE_HOST, "PolicyViolation", "platform property seccomp: 'Unconfined'",
                                      "raises the minimum to Container"),
    "executor": ({"policy": {"isolation": {"executors": ["auto", "namespace"]}}}, ON_THE_HOST | {"executor": "host"},
                 "PolicyViolation", "platform property executor: 'host'", "allowed: auto, namespace"),
    "network": ({"policy": {"network": {"policies": ["None"]}}}, ON_THE_HOST, "PolicyViolation",
                "platform property network: 'Full'", "allowed: None"),
    "policy-memory": ({"policy": {"max_resources": {"memory": "64Mi"}}}, IN_A_SANDBOX | {"memory": "128Mi"},
                      "PolicyViolation", "platform property memory: '128Mi'", "at most 64Mi"),
    "task-limits-cpu": ({"task_limits": {"cpu": "500m"}}, IN_A_SANDBOX | {"cpu": "1"}, "LimitTooLarge",
                        "platform property cpu: '1'", "set task_limits.cpu in the worker file"),
    "task-limits-memory": ({"task_limits": {"memory": "64Mi"}}, IN_A_SANDBOX | {"memory": "128Mi"}, "LimitTooLarge",
                           "platform property memory: '128Mi'", "set task_limits.memory in the worker file"),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """BuildGrid, and one worker on the host executor whose file allows only registry.local/* images."""
    require_tools()
    with ReapiStack(tmp_path_factory.mktemp("reapi-policy"), capacity=1) as stack:
        stack.start_worker("host", bot_id="reapi-policy-bot", floor="None", extra=E2E_RULES)
        yield stack


@pytest.fixture
def marker():
    path = Path(f"/tmp/expbuild-reapi-policy-{uuid.uuid4().hex[:10]}")
    yield path
    path.unlink(missing_ok=True)


def action_for(properties: dict[str, str], script: str) -> tuple[re_pb2.Action, list[bytes]]:
    """An action running ``script`` with ``properties``, and the blobs a client uploads for it."""
    command = re_pb2.Command(arguments=["/bin/sh", "-c", script])
    for name in sorted(properties):
        command.platform.properties.add(name=name, value=properties[name])
    command_bytes, root = command.SerializeToString(deterministic=True), directory()
    action = re_pb2.Action(command_digest=digest_of(command_bytes), input_root_digest=digest_of(root),
                           do_not_cache=True)
    return action, [command_bytes, root, action.SerializeToString(deterministic=True)]


async def run_in_process(stack: ReapiStack, tmp_path: Path, action: re_pb2.Action, worker_file: dict):
    """The action through an ActionRunner judging by ``worker_file``; (status, result, the executors)."""
    config = parse_worker_config({"work_dir": str(tmp_path / "work")} | worker_file, source="worker.toml")
    executors = [CountingExecutor(HostExecutor()), CountingExecutor(NamespaceExecutor(NamespaceConfig()))]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.port}") as channel:
        remote = RemoteCas(channel)
        runner = ActionRunner(RunnerSettings(bot_id="in-process", work_dir=tmp_path / "actions",
                                             floor=IsolationLevel(config.isolation_minimum), config=config),
                              LocalCas(tmp_path / "cas", 1 << 26, remote), remote, {"auto": executors})
        status, result = await runner.run(f"policy-{uuid.uuid4().hex[:8]}", action)
    return status, result, executors


def rejected_count() -> float:
    return REGISTRY.get_sample_value("expbuild_reapi_actions_total", {"outcome": "rejected", "executor": "-"}) or 0.0


def audit_ends(caplog) -> list[dict]:
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "expbuild.audit"]
    return [r for r in records if r["event"] == "end"]


@pytest.mark.parametrize("case", list(REFUSED))
async def test_an_action_the_worker_file_forbids_is_refused_before_anything_runs(stack, tmp_path, case, marker,
                                                                                   caplog):
    worker_file, properties, reason, named, accepted = REFUSED[case]
    action, blobs = action_for(properties, f"touch {marker}")
    with grpc.insecure_channel(f"127.0.0.1:{stack.port}") as channel:
        upload(channel, *blobs)
    caplog.set_level(logging.INFO, logger="expbuild.audit")
    before = rejected_count()

    status, _, executors = await run_in_process(stack, tmp_path, action, worker_file)
    assert status.code == code_pb2.FAILED_PRECONDITION, status
    assert status.message.startswith(f"{reason}: "), status.message
    assert named in status.message and accepted in status.message, status.message
    assert not status.details                     # no PreconditionFailure: not a CAS miss to retry
    assert [e.runs for e in executors] == [[], []] and not marker.exists()
    assert rejected_count() == before + 1
    [end] = audit_ends(caplog)
    assert end["outcome"] == {"result": "rejected", "message": status.message}
    assert end["argv"] == ["/bin/sh", "-c", f"touch {marker}"]

    control = {"work_dir": str(tmp_path / "work")}    # the same action, a worker file without the knob
    status, result, executors = await run_in_process(stack, tmp_path, action, control)
    assert status.code == code_pb2.OK and result.exit_code == 0, status
    ran_on_host = properties.get("seccomp") == "Unconfined"   # only the host executor offers Unconfined
    assert [len(e.runs) for e in executors] == ([1, 0] if ran_on_host else [0, 1])
    assert marker.exists() is ran_on_host         # the namespace executor's /tmp is its own


async def test_a_raised_floor_is_applied_to_the_action(stack, tmp_path):
    action, blobs = action_for(IN_A_SANDBOX | {"isolation": "Process"}, "true")
    with grpc.insecure_channel(f"127.0.0.1:{stack.port}") as channel:
        upload(channel, *blobs)
    raises = {"policy": {"isolation": {"minimum": "VM", "below_minimum": "Raise"}}}
    status, _, executors = await run_in_process(stack, tmp_path, action, raises)
    assert status.code == code_pb2.FAILED_PRECONDITION, status   # no executor here offers VM
    assert "platform property isolation Process raised to VM by the worker config's [policy]" in status.message
    assert [e.runs for e in executors] == [[], []]

    raises = {"policy": {"isolation": {"minimum": "Container", "below_minimum": "Raise"}}}
    status, result, executors = await run_in_process(stack, tmp_path, action, raises)
    assert status.code == code_pb2.OK and result.exit_code == 0, status
    assert [len(e.runs) for e in executors] == [0, 1]


def test_the_worker_process_obeys_its_files_policy_through_buildgrid(stack, marker):
    refused, blobs = action_for(ON_THE_HOST | {"container-image": "docker.io/evil/miner:latest"}, f"touch {marker}")
    allowed, more = action_for(ON_THE_HOST | {"container-image": "registry.local/tools:1"}, f"touch {marker}")
    with grpc.insecure_channel(f"127.0.0.1:{stack.port}") as channel:
        upload(channel, *blobs)
        upload(channel, *more)
        answer = execute(channel, blobs[-1])
        assert answer.status.code == code_pb2.FAILED_PRECONDITION, answer.status
        assert answer.status.message.startswith("PolicyViolation: platform property container-image: "
                                                "'docker.io/evil/miner:latest' is not allowed by the worker "
                                                "config's [policy] (allowed: registry.local/*)"), answer.status
        assert not marker.exists()
        assert '"result":"rejected"' in stack.worker_log()

        answer = execute(channel, more[-1])          # the control: an image the file allows
        assert answer.status.code == code_pb2.OK and answer.result.exit_code == 0, answer
        assert marker.exists()


async def test_an_image_without_a_trusted_signature_is_refused_until_one_is_kept_beside_it(stack, tmp_path, marker):
    repository, digest = "registry.local/ci/app", "sha256:" + "5e" * 32
    action, blobs = action_for(ON_THE_HOST | {"container-image": f"{repository}@{digest}"}, f"touch {marker}")
    with grpc.insecure_channel(f"127.0.0.1:{stack.port}") as channel:
        upload(channel, *blobs)
    store, publisher = tmp_path / "signatures", Publisher("ci-release")
    store.mkdir()
    verifying = {"policy": {"images": {"verify_signature": True, "signatures": str(store),
                                       "trusted_publishers": [{"name": "ci-release", "public_key": publisher.pem}]}}}
    status, _, executors = await run_in_process(stack, tmp_path, action, verifying)
    assert status.code == code_pb2.FAILED_PRECONDITION and not status.details, status
    assert status.message.startswith("UntrustedImage: platform property container-image: "), status.message
    assert f"{store}/sha256-{'5e' * 32}.sig" in status.message
    assert [e.runs for e in executors] == [[], []] and not marker.exists()

    signed = payload(repository, digest)          # the control: the same file, a signature kept beside the image
    (store / f"sha256-{'5e' * 32}.payload.json").write_bytes(signed)
    (store / f"sha256-{'5e' * 32}.sig").write_text(publisher.sign(signed) + "\n")
    status, result, executors = await run_in_process(stack, tmp_path, action, verifying)
    assert status.code == code_pb2.OK and result.exit_code == 0, status
    assert [len(e.runs) for e in executors] == [1, 0] and marker.exists()
