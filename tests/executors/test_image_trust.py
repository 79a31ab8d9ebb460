"""Docker and Podman run an image by content: the tag is resolved once, and the image ID that ran is reported.

Images are built here from the local busybox image (no registry is reachable). Each case is judged from
the engine: the ID the status reports is the ID the engine gives the tag at that moment, and a tag moved
to other content afterwards changes the next run's ID, not a past one.
"""

from __future__ import annotations

import subprocess
import uuid

import pytest
from container_cases import request, usable, workspace  # noqa: F401 - the fixture
from expbuild_isolation.api.task import ExecutionTask
from expbuild_isolation.worker.config import WorkerConfig
from expbuild_isolation.worker.local import run_task

BASE = "localhost/expbuild-busybox:latest"


BUILT: list[tuple[str, str]] = []  # (engine, image ID) of every image built here, removed after each test


def build(engine: str, tag: str, label: str) -> str:
    """Build ``tag`` from the local busybox image with a label; its image ID (sha256:...)."""
    dockerfile = f"FROM {BASE}\nLABEL expbuild.io/trust-test={label}-{uuid.uuid4().hex[:8]}\n"
    subprocess.run([engine, "build", "-q", "-t", tag, "-"], input=dockerfile, text=True, capture_output=True,
                   check=True)
    BUILT.append((engine, image_id(engine, tag)))
    return BUILT[-1][1]


def image_id(engine: str, reference: str) -> str:
    found = subprocess.run([engine, "image", "inspect", "--format", "{{.Id}}", reference], capture_output=True,
                           text=True, check=True).stdout.strip()
    return found if found.startswith("sha256:") else f"sha256:{found}"


@pytest.fixture
def tag(request_engine):  # type: ignore[no-untyped-def]
    name = f"localhost/expbuild-trust-{uuid.uuid4().hex[:8]}:t"
    yield name
    subprocess.run([request_engine, "rmi", "-f", name], capture_output=True)
    while BUILT:  # (an image the tag was moved away from has no name left to remove it by)
        engine, built = BUILT.pop()
        subprocess.run([engine, "rmi", "-f", built], capture_output=True)
    assert "expbuild-trust-" not in subprocess.run([request_engine, "images"], capture_output=True, text=True).stdout


@pytest.fixture(params=["docker", "podman"])
def request_engine(request):  # type: ignore[no-untyped-def]
    return request.param


async def test_the_image_id_that_ran_is_reported_and_a_moved_tag_changes_only_the_next_run(
        request_engine, tag, workspace):
    executor = await usable(request_engine)
    first = build(request_engine, tag, "one")
    result = await executor.execute(request(workspace, "true", image=tag, timeout_seconds=30))
    assert result.exit_code == 0 and result.image_id == first
    second = build(request_engine, tag, "two")  # the same tag, other content
    assert second != first
    again = await executor.execute(request(workspace, "true", image=tag, timeout_seconds=30))
    assert again.image_id == second and result.image_id == first
    await executor.close()


async def test_the_status_of_a_run_records_the_image_id(request_engine, tag, tmp_path):
    executor = await usable(request_engine)
    built = build(request_engine, tag, "status")
    task = ExecutionTask.model_validate({"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask",
                                         "metadata": {"name": "t"}, "spec": {"image": tag, "command": ["true"],
                                                                             "timeout": "30s"}})
    status = await run_task(task, [executor], WorkerConfig(work_dir=tmp_path))
    assert status.phase.value == "Succeeded", status
    assert status.image_id == built
    assert status.model_dump(by_alias=True, exclude_none=True)["imageID"] == built
    await executor.close()


async def test_an_image_pinned_by_digest_runs_and_its_id_is_reported(request_engine, tag, workspace):
    """name@sha256:<manifest digest>: Podman keeps one for images built locally; Docker only for pulled ones."""
    if request_engine == "docker":
        pytest.skip("Docker records no manifest digest for an image built locally (no registry is reachable)")
    executor = await usable("podman")
    built = build("podman", tag, "pinned")
    digest = subprocess.run(["podman", "image", "inspect", "--format", "{{.Digest}}", tag], capture_output=True,
                            text=True, check=True).stdout.strip()
    pinned = f"{tag.rsplit(':', 1)[0]}@{digest}"
    result = await executor.execute(request(workspace, "true", image=pinned, timeout_seconds=30))
    assert result.exit_code == 0 and result.image_id == built
    await executor.close()


