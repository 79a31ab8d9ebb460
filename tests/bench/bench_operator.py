"""Operator throughput against KMock's emulator; prints JSON.

* creation -> Job latency (p50, p99) with 200 tasks created at once;
* the operator process's RSS once it manages 1,000 tasks.

The operator runs in a child process (so RSS is its own), talking HTTP to the
emulator in this process. Run: ``python tests/bench/bench_operator.py``
(or ``python -m pytest tests/bench/bench_operator.py -m bench -s``).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

NS = "bench"
TASKS = f"/apis/expbuild.io/v1alpha1/namespaces/{NS}/executiontasks"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"


def operator_child(url: str) -> None:
    """Entry of the child process: the real operator, logged in to ``url``."""
    import logging

    import kopf

    from expbuild_isolation.controller.run import build
    from expbuild_isolation.kube.config import OperatorConfig

    logging.basicConfig(level=logging.ERROR)
    config = OperatorConfig(metrics_port=0, resync_seconds=3600, allowed_images=["*"])
    registry, memo = build(config, lambda **_: kopf.ConnectionInfo(server=url, insecure=True))
    settings = kopf.OperatorSettings()
    settings.posting.enabled = False  # KMock stores no generateName objects; Events would only fail
    asyncio.run(kopf.operator(registry=registry, memo=memo, settings=settings, clusterwide=True, standalone=True))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def body(i: int) -> dict[str, Any]:
    return {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask",
            "metadata": {"name": f"t{i:05d}", "namespace": NS, "uid": f"uid-{i}", "generation": 1,
                         "resourceVersion": "1"},
            "spec": {"image": "localhost/busybox:latest", "command": ["echo", str(i)]}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def measure(server: Any, *, burst: int = 200, total: int = 1000) -> dict[str, Any]:
    from tests.controller.conftest import declare_resources

    declare_resources(server)
    job_seen: dict[str, float] = {}

    def record(request: Any) -> Any:
        job_seen.setdefault(request.data["metadata"]["name"], time.monotonic())
        return request.data

    server["post", JOBS] << record
    child = subprocess.Popen([sys.executable, __file__, "--operator", str(server.url).rstrip("/")],
                             env=os.environ | {"PYTHONPATH": str(ROOT / "operator")},
                             stderr=subprocess.DEVNULL)  # its shutdown noise would bury the JSON
    try:
        await asyncio.sleep(3)  # let kopf log in and start its watches
        created: dict[str, float] = {}

        async def create(i: int) -> None:
            created[f"xt-t{i:05d}"] = time.monotonic()
            async with server.post(TASKS, json=body(i)) as response:
                assert response.status < 400, await response.text()

        await asyncio.gather(*(create(i) for i in range(burst)))
        await _wait(lambda: len(job_seen) >= burst, 120)
        latencies = [job_seen[name] - created[name] for name in created]
        print(json.dumps({"burst_done": burst, "p50": statistics.median(latencies),
                          "p99": percentile(latencies, 0.99), "rss": rss_bytes(child.pid)}), file=sys.stderr)
        for start in range(burst, total, 100):  # the emulator chokes on 800 simultaneous POSTs
            await asyncio.gather(*(create(i) for i in range(start, min(start + 100, total))))
        started = time.monotonic()
        complete = await _wait(lambda: len(job_seen) >= total, 240, strict=False)
        return {
            "benchmark": "operator_kmock",
            "tasks_at_once": burst,
            "creation_to_job_seconds": {"p50": round(statistics.median(latencies), 4),
                                        "p99": round(percentile(latencies, 0.99), 4),
                                        "max": round(max(latencies), 4)},
            "tasks_created": total,
            "jobs_created": len(job_seen),
            "all_jobs_within_240s": complete,
            "seconds_for_remaining_tasks": round(time.monotonic() - started, 1),
            "operator_rss_bytes": rss_bytes(child.pid),
            "operator_rss_mib": round(rss_bytes(child.pid) / 2**20, 1),
        }
    finally:
        child.kill()
        child.wait(30)


async def _wait(condition: Any, timeout: float, strict: bool = True) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            if strict:
                raise TimeoutError("the operator did not create the Jobs in time")
            return False
        await asyncio.sleep(0.02)
    return True


async def run_standalone() -> dict[str, Any]:
    import kmock

    async with kmock.KubernetesEmulator() as server, kmock.Server(server):
        return await measure(server)


@pytest.mark.bench
async def test_operator_throughput(kmock: Any) -> None:
    print(json.dumps(await measure(kmock)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--operator"]:
        operator_child(sys.argv[2])
    else:
        print(json.dumps(asyncio.run(run_standalone()), indent=2))
