"""Creation to final status through the operator's placement and a node agent, against KMock; prints JSON.

Three processes, as in a cluster: KMock's emulator (this process), the
operator (kopf, a child process) placing ``isolation.executor: namespace``
tasks on node ``n1``, and the node agent started by its real CLI entry
(``expbuild-isolation agent --node n1 ...``, a child process, logged in
through a kubeconfig) running them with the real namespace executor (needs
root). Phases are sampled by listing the tasks every 50 ms (up to ~50 ms of
sampling error).

* sequential: one task at a time, creation -> Scheduled -> Running -> Succeeded;
* burst: ``burst`` tasks created at once, the agent running 4 at a time;
* the agent's /healthz and /metrics answer while it works.

Run: ``python tests/bench/bench_agent.py`` (or ``python -m pytest tests/bench/bench_agent.py -m bench -s``).
"""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))

from tests.bench.common import on_emulator, summary  # noqa: E402

TASKS = "/apis/expbuild.io/v1alpha1/namespaces/ci/executiontasks"
PHASES = ("Scheduled", "Running", "Succeeded")


def body(name: str) -> dict[str, Any]:
    return {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask",
            "metadata": {"name": name, "namespace": "ci", "uid": f"uid-{name}", "generation": 1,
                         "resourceVersion": "1", "creationTimestamp": "2025-03-01T12:00:00Z"},
            "spec": {"command": ["/bin/sh", "-c", "echo hello"], "timeout": "60s",
                     "isolation": {"executor": "namespace"}}}


class Sampler:
    """First time each task was seen in each phase, from a 50 ms listing loop."""

    def __init__(self, api: Any) -> None:
        self.api, self.seen, self.durations = api, {}, {}

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            for task in await self.api.items(TASKS):
                status = task.get("status") or {}
                phase = status.get("phase")
                if phase:
                    self.seen.setdefault((task["metadata"]["name"], phase), now)
                if phase == "Succeeded":
                    self.durations[task["metadata"]["name"]] = status.get("durationSeconds") or 0.0
            await asyncio.sleep(0.05)

    async def wait(self, names: list[str], phase: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not all((name, phase) in self.seen for name in names):
            if time.monotonic() > deadline:
                raise TimeoutError(f"not all of {len(names)} tasks reached {phase} in {timeout}s")
            await asyncio.sleep(0.005)


def operator_child(url: str) -> None:
    """Entry of the operator's child process: the real operator, logged in to ``url``."""
    import logging

    import kopf

    from expbuild_isolation.controller.run import build
    from expbuild_isolation.kube.config import OperatorConfig

    logging.basicConfig(level=logging.ERROR)
    config = OperatorConfig(metrics_port=0, resync_seconds=3600, agent_namespace="expbuild-system",
                            agent_check_seconds=300)
    registry, memo = build(config, lambda **_: kopf.ConnectionInfo(server=url, insecure=True))
    settings = kopf.OperatorSettings()
    settings.posting.enabled = False  # KMock stores no generateName objects; Events would only fail
    asyncio.run(kopf.operator(registry=registry, memo=memo, settings=settings, clusterwide=True, standalone=True))


def kubeconfig(url: str) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "kmock",
                       "clusters": [{"name": "kmock", "cluster": {"server": url}}],
                       "users": [{"name": "agent", "user": {"token": "bench"}}],
                       "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "agent"}}]})


async def measure(server: Any, *, sequential: int = 10, burst: int = 16, poll_seconds: float = 0.1,
                  metrics_port: int = 18181) -> dict[str, Any]:
    from tests.agent.conftest import declare_leases
    from tests.controller.conftest import Api, declare_resources

    declare_resources(server)
    declare_leases(server)
    api = Api(server)
    url = str(server.url).rstrip("/")
    env = os.environ | {"PYTHONPATH": str(ROOT / "operator")}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "kubeconfig").write_text(kubeconfig(url))
        Path(tmp, "worker.toml").write_text(f'''work_dir = "{tmp}/work"\nmax_concurrent_tasks = 4\n
[executor]\ntype = "namespace"\n[executor.namespace]\ncgroup_parent = "expbuild-bench-agent"\n''')
        # BENCH_AGENT_DEBUG=1: the agent runs with asyncio debug (slow callbacks logged) into <tmp>/agent.log
        debug = {"PYTHONASYNCIODEBUG": "1"} if os.environ.get("BENCH_AGENT_DEBUG") else {}
        agent_log = open(f"{tmp}/agent.log", "w") if debug else subprocess.DEVNULL  # noqa: SIM115
        operator = subprocess.Popen([sys.executable, __file__, "--operator", url], env=env,
                                    stderr=subprocess.DEVNULL)
        agent = subprocess.Popen([sys.executable, "-m", "expbuild_isolation.cli", "agent", "--node", "n1",
                                  "--config", f"{tmp}/worker.toml", "--namespace", "expbuild-system",
                                  "--seccomp-dir", f"{tmp}/seccomp", "--metrics-port", str(metrics_port),
                                  "--poll-seconds", str(poll_seconds)],
                                 env=env | {"KUBECONFIG": f"{tmp}/kubeconfig"} | debug, stderr=agent_log)
        sampler = Sampler(api)
        sampling = asyncio.create_task(sampler.run())
        created: dict[str, float] = {}
        try:
            await _until(lambda: api.get("/apis/coordination.k8s.io/v1/namespaces/expbuild-system/leases/"
                                         "expbuild-agent-n1"), 30)
            await asyncio.sleep(2)  # let kopf log in and start its watches
            for i in range(sequential):
                name = f"seq-{i:03d}"
                created[name] = time.monotonic()
                await api.create(TASKS, body(name))
                await sampler.wait([name], "Succeeded")
            seq = [f"seq-{i:03d}" for i in range(sequential)]
            names = [f"burst-{i:03d}" for i in range(burst)]
            started = time.monotonic()
            for name in names:
                created[name] = started
            await asyncio.gather(*(api.create(TASKS, body(name)) for name in names))
            await sampler.wait(names, "Succeeded")
            burst_wall = time.monotonic() - started
            await asyncio.sleep(1)  # the agent counts a task after its status patch and Event
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{metrics_port}/healthz") as response:
                    healthz = response.status
                async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                    metrics = await response.text()
        finally:
            sampling.cancel()
            for child in (operator, agent):
                child.kill()
                child.wait(30)

    def since(names: list[str], phase: str) -> dict[str, float]:
        """Over the tasks the sampler caught in ``phase`` (a phase shorter than 50 ms may be missed)."""
        times = [sampler.seen[(name, phase)] - created[name] for name in names if (name, phase) in sampler.seen]
        return summary(times) | {"samples": len(times)}

    finished = [line for line in metrics.splitlines()
                if line.startswith("expbuild_tasks_total{") and 'executor="namespace"' in line]
    return {
        "benchmark": "agent_namespace_kmock",
        "agent_poll_seconds": poll_seconds,
        "sequential_tasks": sequential,
        "creation_to_seconds": {phase: since(seq, phase) for phase in PHASES},
        "executor_duration_seconds": summary([sampler.durations[name] for name in seq]),
        "burst_tasks": burst,
        "agent_slots": 4,
        "burst_creation_to_seconds": {phase: since(names, phase) for phase in PHASES},
        "burst_wall_seconds": round(burst_wall, 3),
        "burst_tasks_per_second": round(burst / burst_wall, 2),
        "agent_healthz_status": healthz,
        "agent_metrics_tasks_total": finished,
    }


async def _until(check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        if time.monotonic() > deadline:
            raise TimeoutError("the agent did not advertise itself in time")
        await asyncio.sleep(0.1)
    return value


@pytest.mark.bench
@pytest.mark.skipif(os.geteuid() != 0, reason="the namespace executor needs root (namespaces, cgroups)")
async def test_agent_latency(kmock: Any) -> None:
    print(json.dumps(await measure(kmock)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--operator"]:
        operator_child(sys.argv[2])
        sys.exit(0)
    print(json.dumps(asyncio.run(on_emulator(measure)), indent=2))
