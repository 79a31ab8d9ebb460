"""The chart's operator pod, run as a container runtime would run it, against KMock.

No kubelet runs here, so this test plays it: it takes the Deployment that
``helm template`` renders with the default values and starts its container with
docker exactly as the pod spec says: the chart's image reference, its args and
env (downward-API fields filled in), user 10001, read-only root filesystem,
all capabilities dropped, no-new-privileges, an emptyDir at /tmp. The only
addition is a kubeconfig pointing at the emulator (a real pod gets its service
account instead). Then it checks what the chart promises: the probes' port
answers /healthz, the metrics port serves the project's metrics, and a task
created in the emulator becomes a Job whose supervisor image is the chart's.

Needs the image (``.ci/build-image.sh``) and a Docker daemon; skipped with the
reason otherwise, or failed when ``EXPBUILD_REQUIRE_IMAGE=1`` (CI).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.controller.conftest import JOBS, TASKS, Api, declare_resources, eventually, task_body

from .chart import HELM, NO_HELM, find, render_chart
from .kubeconfig import write_kubeconfig

pytestmark = pytest.mark.skipif(HELM is None, reason=NO_HELM)

DOWNWARD = {"metadata.namespace": "expbuild-system", "metadata.name": "expbuild-isolation-operator-0"}


def _need_image(image: str) -> None:
    reason = ""
    if shutil.which("docker") is None:
        reason = "docker CLI not on PATH"
    elif subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        reason = f"image {image} not built (run .ci/build-image.sh)"
    if reason:
        if os.environ.get("EXPBUILD_REQUIRE_IMAGE") == "1":
            pytest.fail(f"EXPBUILD_REQUIRE_IMAGE=1 but {reason}")
        pytest.skip(reason)


def _docker_args(pod: dict[str, Any], kubeconfig: Path, name: str) -> list[str]:
    """``docker run`` flags for the pod's single container, from its spec."""
    container = pod["containers"][0]
    ctx = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    args = ["docker", "run", "-d", "--rm", "--name", name, "--network", "host",
            "--user", f"{ctx['runAsUser']}:{ctx.get('runAsGroup', ctx['runAsUser'])}",
            "-v", f"{kubeconfig}:/kube/config:ro", "-e", "KUBECONFIG=/kube/config"]
    if ctx.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if ctx.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if "ALL" in ctx.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", "ALL"]
    assert ctx["seccompProfile"]["type"] == "RuntimeDefault"  # docker's default profile
    empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    for mount in container.get("volumeMounts", []):
        assert mount["name"] in empty_dirs, f"unexpected volume {mount}"
        args += ["--tmpfs", f"{mount['mountPath']}:rw,mode=1777"]
    for env in container.get("env", []):
        if "value" in env:
            args += ["-e", f"{env['name']}={env['value']}"]
        else:
            args += ["-e", f"{env['name']}={DOWNWARD[env['valueFrom']['fieldRef']['fieldPath']]}"]
    return [*args, container["image"], *container.get("args", [])]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


async def test_the_chart_operator_pod_serves_probes_metrics_and_turns_a_task_into_a_job(kmock: Any,
                                                                                      tmp_path: Path):
    deployment = find(render_chart(), "Deployment", "expbuild-isolation-operator")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    _need_image(container["image"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probe = container["livenessProbe"]["httpGet"]
    assert container["readinessProbe"]["httpGet"]["port"] == probe["port"]
    health_url = f"http://127.0.0.1:{ports[probe['port']]}{probe['path']}"
    metrics_url = f"http://127.0.0.1:{ports['metrics']}/metrics"
    busy = [url for url in (health_url, metrics_url) if _get(url)[0]]
    assert not busy, f"something on this machine already answers {busy}: the pod's ports are taken"

    declare_resources(kmock)
    api = Api(kmock)
    kubeconfig = write_kubeconfig(kmock, tmp_path)
    name = f"expbuild-chart-operator-{uuid.uuid4().hex[:6]}"
    started = subprocess.run(_docker_args(pod, kubeconfig, name), capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    try:
        async def healthy() -> bool:
            return (await asyncio.to_thread(_get, health_url))[0] == 200
        await eventually(healthy, timeout=60, what=f"{health_url} answering 200")
        status, text = await asyncio.to_thread(_get, metrics_url)
        assert status == 200 and "expbuild_tasks_total" in text and "expbuild_reconcile_errors_total" in text

        await api.create(TASKS, task_body("from-pod"))
        job = await eventually(lambda: api.get(f"{JOBS}/xt-from-pod"), timeout=30, what="the task's Job")
        init_images = {c["image"] for c in job["spec"]["template"]["spec"].get("initContainers", [])}
        assert container["image"] in init_images, init_images
        assert subprocess.run(["docker", "inspect", name], capture_output=True).returncode == 0, "operator exited"
    finally:
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    assert "Traceback" not in logs.stdout + logs.stderr, logs.stdout[-3000:] + logs.stderr[-3000:]
