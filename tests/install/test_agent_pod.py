"""The chart's node agent pod, run as a container runtime would run it, against KMock.

No kubelet runs here, so this test plays it: it renders the DaemonSet with ``agent.privileged=false`` (the
least privilege the chart offers) and the Docker socket, and starts its container with docker exactly as
the pod spec says: the chart's image, args and env (downward-API fields filled in), user 0, the added
capabilities and nothing else beyond Docker's defaults, seccomp and AppArmor as the spec says, the
hostPath mounts (the cgroup tree and the Docker socket as they are; the kubelet's seccomp directory and the
work directory mapped to temporary directories), the ConfigMap as a file. The only addition is a kubeconfig
pointing at the emulator (a real pod gets its service account instead).

Then tasks placed on its node run through it to Succeeded on the namespace and the Docker executors, and
three of the escape suite's attacks, run by the namespace executor inside the agent's container, are judged
from this host: a connection to a server on the host's loopback, a kill of a host process, and files
written outside the workspace.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import declare_leases
from tests.controller.conftest import TASKS, Api, declare_resources, eventually, task_body

from .chart import HELM, NO_HELM, find, render_chart
from .kubeconfig import write_kubeconfig
from .test_image import require_current_image

pytestmark = [pytest.mark.skipif(HELM is None, reason=NO_HELM),
              pytest.mark.skipif(os.geteuid() != 0, reason="the agent's namespace executor needs root")]

NODE = "agent-pod-node"
DOWNWARD = {"spec.nodeName": NODE, "metadata.namespace": "expbuild-system"}
FINISHED = {"Succeeded", "Failed", "TimedOut", "Error", "Cancelled"}


def agent_values(tmp: Path) -> dict[str, Any]:
    work = tmp / "work"
    config = (f'work_dir = "{work}"\nmax_concurrent_tasks = 4\n\n[executor]\ntype = "auto"\n'
              f'chain = ["namespace", "docker"]\n\n[executor.namespace]\ncgroup_parent = "expbuild-agent-pod"\n')
    return {"kubeletRootDir": str(tmp / "kubelet"),
            "agent": {"enabled": True, "privileged": False, "dockerSocket": True, "workDir": str(work),
                      "config": config}}


def docker_args(pod: dict[str, Any], config_dir: Path, kubeconfig: Path, name: str) -> list[str]:
    """``docker run`` flags for the agent pod's container, from its spec (and nothing it does not say)."""
    container = pod["containers"][0]
    ctx = container["securityContext"]
    assert "privileged" not in ctx  # the least-privilege mode under test
    args = ["docker", "run", "-d", "--rm", "--name", name, "--network", "host", "--user", str(ctx["runAsUser"]),
            "--cgroupns", "host", "-v", f"{kubeconfig}:/kube/config:ro", "-e", "KUBECONFIG=/kube/config"]
    for cap in ctx.get("capabilities", {}).get("add", []):
        args += ["--cap-add", cap]
    if ctx.get("seccompProfile", {}).get("type") == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    if ctx.get("appArmorProfile", {}).get("type") == "Unconfined":
        args += ["--security-opt", "apparmor=unconfined"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        mode = ":ro" if mount.get("readOnly") else ""
        if "hostPath" in volume:
            host = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") == "DirectoryOrCreate":
                host.mkdir(parents=True, exist_ok=True)
            args += ["-v", f"{host}:{mount['mountPath']}{mode}"]
        elif "configMap" in volume:
            args += ["-v", f"{config_dir}:{mount['mountPath']}:ro"]
        elif "emptyDir" in volume:
            args += ["--tmpfs", f"{mount['mountPath']}:rw,exec,mode=1777"]
        else:
            raise AssertionError(f"unexpected volume {volume}")
    for env in container.get("env", []):
        value = env.get("value") or DOWNWARD[env["valueFrom"]["fieldRef"]["fieldPath"]]
        args += ["-e", f"{env['name']}={value}"]
    return [*args, container["image"], *container.get("args", [])]


def placed(name: str, **spec: Any) -> dict[str, Any]:
    body = task_body(name, **spec)
    body["metadata"]["labels"] = {"expbuild.io/node": NODE}
    body["status"] = {"phase": "Scheduled", "reason": "PlacedOnAgent", "executor": "agent", "node": NODE,
                      "observedGeneration": 1}
    return body


def sh(script: str, **spec: Any) -> dict[str, Any]:
    return {"command": ["sh", "-c", script], "isolation": {"executor": "namespace"}, "timeout": "60s"} | spec


class Listener:
    """A TCP server on the host's loopback that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port, self.accepted = self.sock.getsockname()[1], 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


async def test_the_chart_agent_pod_runs_namespace_and_docker_tasks_and_contains_escapes(kmock: Any, tmp_path: Path):
    daemonset = find(render_chart(agent_values(tmp_path)), "DaemonSet", "expbuild-isolation-agent")[0]
    pod = daemonset["spec"]["template"]["spec"]
    require_current_image()
    config = find(render_chart(agent_values(tmp_path)), "ConfigMap", "expbuild-isolation-agent-config")[0]
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    for key, text in config["data"].items():
        (config_dir / key).write_text(text)
    declare_resources(kmock)
    declare_leases(kmock)
    api = Api(kmock)
    kubeconfig = write_kubeconfig(kmock, tmp_path)
    listener = Listener()
    victim = subprocess.Popen(["sleep", f"600.{uuid.uuid4().int % 10**6}"])
    outside = tmp_path / "work" / "outside-marker"
    name = f"expbuild-chart-agent-{uuid.uuid4().hex[:6]}"
    started = subprocess.run(docker_args(pod, config_dir, kubeconfig, name), capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    try:
        lease = f"/apis/coordination.k8s.io/v1/namespaces/expbuild-system/leases/expbuild-agent-{NODE}"
        advert = await eventually(lambda: api.get(lease), timeout=60, what="the agent's Lease")
        assert advert["metadata"]["annotations"]["expbuild.io/executors"] == "namespace,docker"
        tasks = {
            "ns-hello": sh("echo from-namespace > hello.txt && cat hello.txt", outputs={"paths": ["hello.txt"]}),
            "docker-hello": {"command": ["sh", "-c", "echo from-docker"], "timeout": "60s",
                             "image": "localhost/expbuild-busybox:latest", "isolation": {"executor": "docker"}},
            "reach-host": sh(f"nc -w 2 127.0.0.1 {listener.port} </dev/null; echo tried"),
            "reach-host-full": sh(f"nc -w 2 127.0.0.1 {listener.port} </dev/null", network={"policy": "Full"}),
            "kill-host": sh(f"kill -9 {victim.pid}; sleep 30 & kill -9 $! && echo killed-own"),
            "write-outside": sh(f"echo x > {outside}; echo x > /etc/expbuild/evil; "
                                f"echo x > /var/lib/kubelet/seccomp/evil.json; echo done"),
        }
        for task, spec in tasks.items():
            await api.create(TASKS, placed(task, **spec))

        async def ended(task: str) -> Any:
            body = await api.get(f"{TASKS}/{task}")
            return body if (body.get("status") or {}).get("phase") in FINISHED else None

        done = {task: (await eventually(lambda task=task: ended(task), timeout=120, what=f"{task} to end"))["status"]
                for task in tasks}
    finally:
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        victim_alive = victim.poll() is None
        victim.kill()
        listener.sock.close()
    failures = {task: status for task, status in done.items() if status["phase"] != "Succeeded"}
    assert not failures, f"{failures}\nagent log:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
    assert (done["ns-hello"]["executor"], done["ns-hello"]["isolationLevel"]) == ("namespace", "Container")
    assert done["ns-hello"]["outputs"][0]["sizeBytes"] == len("from-namespace\n")
    assert done["docker-hello"]["executor"] == "docker" and "from-docker" in done["docker-hello"]["logs"]["stdoutTail"]
    # Judged here, on the host: the positive controls reached what they may, the attacks nothing.
    assert listener.accepted == 1, "only the Full task may reach the host's loopback"
    assert victim_alive, "a task killed a host process"
    assert "killed-own" in done["kill-host"]["logs"]["stdoutTail"]  # kill works inside the sandbox
    assert not outside.exists() and not list((tmp_path / "kubelet" / "seccomp").glob("evil*"))
    assert not (config_dir / "evil").exists()
    assert "Traceback" not in logs.stdout + logs.stderr
