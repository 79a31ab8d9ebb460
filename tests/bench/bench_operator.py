"""Operator throughput against KMock's emulator; prints JSON within about three minutes.

Phases, each with the CPU seconds spent by the emulator (this process: the
emulator plus the few POSTs that create the tasks) and by the operator (the
child process) during the phase, from ``/proc/<pid>/stat`` utime+stime:

* ``single``: one task at a time (n=20), creation (the create call returned) -> Job POST seen by the
  emulator; ``create_call_to_job_seconds`` starts the clock when the call is made instead;
* ``burst_20``, ``burst_50``, ``burst_200``: that many tasks created at once;
* ``scale``: more tasks up to 1,000 in all, capped by a timeout; reports how
  many Jobs were reached and the operator's RSS (``VmRSS`` of the child only).

The operator runs in a child process (so RSS and CPU are its own), talking HTTP
to the emulator in this process. Run: ``python tests/bench/bench_operator.py``
(or ``python -m pytest tests/bench/bench_operator.py -m bench -s``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.common import on_emulator, summary  # noqa: E402
from tests.controller.conftest import forget_served_requests  # noqa: E402

NS = "bench"
TASKS = f"/apis/expbuild.io/v1alpha1/namespaces/{NS}/executiontasks"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
TICKS = os.sysconf("SC_CLK_TCK")


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


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def body(i: int) -> dict[str, Any]:
    return {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask",
            "metadata": {"name": f"t{i:05d}", "namespace": NS, "uid": f"uid-{i}", "generation": 1,
                         "resourceVersion": "1"},
            "spec": {"image": "localhost/busybox:latest", "command": ["echo", str(i)]}}


async def measure(server: Any, *, single: int = 20, bursts: tuple[int, ...] = (20, 50, 200), total: int = 1000,
                  budget: float = 170.0) -> dict[str, Any]:
    from tests.controller.conftest import declare_resources

    began = time.monotonic()
    declare_resources(server, namespaces=(NS,))
    job_seen: dict[str, float] = {}
    called: dict[str, float] = {}    # create call made
    created: dict[str, float] = {}   # create call returned
    counter = itertools.count()

    def record(request: Any) -> Any:
        job_seen.setdefault(request.data["metadata"]["name"], time.monotonic())
        return request.data

    server["post", JOBS] << record
    forget_served_requests(server)
    tally = count_requests(server)
    child = subprocess.Popen([sys.executable, __file__, "--operator", str(server.url).rstrip("/")],
                             env=os.environ | {"PYTHONPATH": str(ROOT / "operator")},
                             stderr=subprocess.DEVNULL)  # its shutdown noise would bury the JSON
    me = os.getpid()

    async def create() -> str:
        i = next(counter)
        name = f"xt-t{i:05d}"
        called[name] = time.monotonic()
        async with server.post(TASKS, json=body(i)) as response:
            assert response.status < 400, await response.text()
        created[name] = time.monotonic()   # the clock starts when the create call returns
        return name

    def left() -> float:
        return budget - (time.monotonic() - began)

    phases: dict[str, Any] = {}
    try:
        await asyncio.sleep(3)  # let kopf log in and start its watches
        idle_rss = rss_bytes(child.pid)

        async def phase(label: str, run: Any, timeout: float) -> None:
            cpu0 = (cpu_seconds(me), cpu_seconds(child.pid))
            counted = Counter(tally)
            t0 = time.monotonic()
            names = await run()
            done = await _wait(lambda: all(n in job_seen for n in names), max(1.0, min(timeout, left())))
            wall = time.monotonic() - t0
            cpu1 = (cpu_seconds(me), cpu_seconds(child.pid))
            reached = [job_seen[n] - created[n] for n in names if n in job_seen]
            # The same from the moment the create call was made: in a burst this includes the emulator's own
            # queue of creates (it runs in this process), which a real API server's clients also wait through.
            from_call = [job_seen[n] - called[n] for n in names if n in job_seen]
            await asyncio.sleep(1)  # let the tail of the phase (status patches, Events) settle before counting
            cpu2 = cpu_seconds(child.pid)
            phases[label] = {"tasks": len(names), "jobs": len(reached), "complete": done,
                             "creation_to_job_seconds": summary(reached),
                             "create_call_to_job_seconds": summary(from_call), "wall_seconds": round(wall, 2),
                             "cpu_seconds": {"emulator": round(cpu1[0] - cpu0[0], 2),
                                             "operator": round(cpu1[1] - cpu0[1], 2)},
                             "operator_cpu_ms_per_task": round(1000 * (cpu2 - cpu0[1]) / max(1, len(names)), 2),
                             "requests_per_task": per_task(counted, tally, len(names))}
            print(json.dumps({label: phases[label]}), file=sys.stderr)

        async def one_by_one() -> list[str]:
            names = []
            for _ in range(single):
                name = await create()
                await _wait(lambda: name in job_seen, min(10.0, max(1.0, left())))
                names.append(name)
            return names

        await phase("single", one_by_one, 60)
        for size in bursts:
            await phase(f"burst_{size}", lambda size=size: asyncio.gather(*(create() for _ in range(size))), 60)

        async def scale() -> list[str]:
            names: list[str] = []
            while len(created) < total and left() > 5:  # the emulator chokes on 800 simultaneous POSTs
                batch = min(100, total - len(created))
                names += await asyncio.gather(*(create() for _ in range(batch)))
            return names

        await phase("scale", scale, left())
        end_rss = rss_bytes(child.pid)
        await asyncio.sleep(6)  # kopf ends an object's worker after settings.batching.idle_timeout (5 s)
        return {
            "benchmark": "operator_kmock",
            "phases": phases,
            "tasks_created": len(created),
            "jobs_created": len(job_seen),
            "operator_rss_bytes": end_rss,
            "operator_rss_mib": round(end_rss / 2**20, 1),
            "operator_rss_settled_mib": round(rss_bytes(child.pid) / 2**20, 1),
            "operator_rss_idle_mib": round(idle_rss / 2**20, 1),
            "total_seconds": round(time.monotonic() - began, 1),
        }
    finally:
        child.kill()
        child.wait(30)


def count_requests(server: Any) -> Counter[str]:
    """A live tally of the requests the emulator serves, by ``VERB resource`` (a watch counts once, when opened)."""
    tally: Counter[str] = Counter()
    base = type(server)

    class Counting(base):  # type: ignore[misc,valid-type]
        __slots__ = ()

        async def _handle(self, request: Any) -> Any:
            tally[_kind_of(request)] += 1
            return await base._handle(self, request)

    server.__class__ = Counting
    return tally


def _kind_of(request: Any) -> str:
    parts = [p for p in request.url.path.split("/") if p]
    if "namespaces" in parts and parts.index("namespaces") + 2 < len(parts):
        parts = parts[parts.index("namespaces") + 2:]
    elif parts[:1] == ["apis"]:
        parts = parts[3:]
    elif parts[:1] == ["api"]:
        parts = parts[2:]
    resource = parts[0] if parts else "/"
    sub = f"/{parts[2]}" if len(parts) > 2 else ""
    verb = request.method.value if hasattr(request.method, "value") else str(request.method)
    if verb == "GET" and request.url.query.get("watch") == "true":
        verb = "WATCH"
    elif verb == "GET" and len(parts) == 1:
        verb = "LIST"
    return f"{verb} {resource}{sub}"


def per_task(before: Counter[str], after: Counter[str], tasks: int) -> dict[str, float]:
    """Requests per task during a phase, by verb and resource; the writes (POST, PATCH, PUT, DELETE) summed."""
    delta = {key: after[key] - before.get(key, 0) for key in after if after[key] - before.get(key, 0)}
    rates = {key: round(count / max(1, tasks), 2) for key, count in sorted(delta.items())}
    rates["writes"] = round(sum(c for k, c in delta.items() if k.split()[0] in ("POST", "PATCH", "PUT", "DELETE"))
                            / max(1, tasks), 2)
    rates["all"] = round(sum(delta.values()) / max(1, tasks), 2)
    return rates


async def _wait(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


@pytest.mark.bench
async def test_operator_throughput(kmock: Any) -> None:
    print(json.dumps(await measure(kmock)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--operator"]:
        operator_child(sys.argv[2])
    else:
        print(json.dumps(asyncio.run(on_emulator(measure)), indent=2))
