"""Operator throughput against KMock's emulator, beside a peer that does nothing but answer; prints JSON.

Phases, each with the CPU seconds spent by the emulator (this process: the
emulator plus the POSTs that create the tasks) and by the child process
answering (the operator, or the peer) during the phase, from
``/proc/<pid>/stat`` utime+stime:

* ``single``: one task at a time (n=20), creation (the create call returned) -> Job POST seen by the
  emulator; ``create_call_to_job_seconds`` starts the clock when the call is made instead;
* ``burst_20``, ``burst_50``, ``burst_200``: that many tasks created at once;
* ``instant_200``: 200 tasks put into the emulator's store at once, each with its ADDED event, without HTTP:
  creation "returns" at once, as from an API server that takes 200 creates in a few milliseconds; the
  latency is the operator's own work (and the emulator serving its requests), not the queue of creates;
* ``back_to_back_100``: 100 tasks created one after the other (each create call awaited, none waiting for
  a Job), the scenario of the issue's real-cluster run (p50 0.905 s, p99 1.94 s there, before #16's work);
* ``scale``: more tasks up to 1,000 in all, capped by a timeout; reports how
  many Jobs were reached and the operator's RSS (``VmRSS`` of the child only).

Requests and CPU per task are counted once every task of the phase has its status patch (those of a burst
wait for its Jobs, ``JobsFirst``), so they include the whole of each task's start.

The peer, in the same run on a fresh emulator of its own: the ``floor_*`` phases are the same phases
answered by a *reflex* instead of the operator: a child process that opens the operator's watches and, for
each task ADDED, POSTs the Job the operator would render, patches the status the operator would write and
posts the Scheduled Event (the same three writes per task, the same bodies, in the operator's order: a status
patch waits while other tasks' Jobs are still to be posted) and decides nothing. The reflex
measures the harness: the emulator (Python, single-threaded, in this process and also serving the creates)
and the watch path. The operator's own share of a burst is its latency above the floor
(``operator_above_floor_p50_seconds``). The operator posts its Events as in production: they are counted in
its requests and CPU (the emulator accepts them without storing them, see ``count_requests``).

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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
if sys.argv[1:2] == ["--operator"]:
    # The operator's child runs with the image's packages: no Kubernetes client library (image/requirements.lock).
    # The test extras install one (``kubernetes`` for the e2e suite, ``pykube-ng`` with pytest-kind), and kopf
    # imports whichever it finds, 33 MiB of models the operator never uses. Before anything imports kopf.
    sys.modules["kubernetes"] = sys.modules["pykube"] = None  # type: ignore[assignment]

from tests.bench.common import on_emulator, summary  # noqa: E402
from tests.controller.conftest import forget_served_requests  # noqa: E402

NS = "bench"
TASKS = f"/apis/expbuild.io/v1alpha1/namespaces/{NS}/executiontasks"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
TICKS = os.sysconf("SC_CLK_TCK")
BURSTS = (20, 50, 200)
BACK_TO_BACK = 100
INSTANT = 200


def operator_child(url: str) -> None:
    """Entry of the child process: the real operator, logged in to ``url``, with the image's packages (above)."""
    import logging

    import kopf

    from expbuild_isolation.controller.run import build
    from expbuild_isolation.kube.config import OperatorConfig

    logging.basicConfig(level=logging.ERROR)
    config = OperatorConfig(metrics_port=0, resync_seconds=3600, allowed_images=["*"])
    registry, memo = build(config, lambda **_: kopf.ConnectionInfo(server=url, insecure=True))
    settings = kopf.OperatorSettings()
    # Events are posted as in production (a POST each; the bench's emulator accepts them: count_requests)
    asyncio.run(kopf.operator(registry=registry, memo=memo, settings=settings, clusterwide=True, standalone=True))


def reflex_child(url: str) -> None:
    """Entry of the peer's child process: the operator's API traffic for each task, with no decisions.

    It opens the watches the operator opens and, for each task ADDED, POSTs the Job the operator renders for
    the bench's task (rendered once at start, only the names changed), the status patch the operator writes
    and a Scheduled Event: the same requests and bodies, so the emulator does the same work for it.
    """
    import aiohttp

    from expbuild_isolation.api.task import ExecutionTask
    from expbuild_isolation.controller.state import JobsFirst
    from expbuild_isolation.kube.config import OperatorConfig
    from expbuild_isolation.kube.render import objects_for

    config = OperatorConfig(metrics_port=0, resync_seconds=3600, allowed_images=["*"])
    template = json.dumps(objects_for(ExecutionTask.model_validate(body(0)), config)[-1])
    status = {"phase": "Scheduled", "reason": "JobCreated", "message": "", "executor": "job",
              "isolationLevel": "Container", "observedGeneration": 1}
    watches = ["/apis/expbuild.io/v1alpha1/executiontasks", "/apis/batch/v1/jobs", "/api/v1/pods",
               "/apis/networking.k8s.io/v1/networkpolicies", "/apis/expbuild.io/v1alpha1/executionpolicies",
               "/api/v1/namespaces"]

    jobs_first = JobsFirst()  # the operator's order: the Jobs of tasks still starting before status patches

    async def answer(session: aiohttp.ClientSession, task: dict[str, Any]) -> None:
        name = task["metadata"]["name"]
        job = json.loads(template.replace("t00000", name).replace("uid-0", task["metadata"].get("uid", "")))
        with jobs_first.starting():
            async with session.post(f"{url}{JOBS}", json=job) as response:
                await response.read()
        await jobs_first.wait_turn()
        async with session.patch(f"{url}{TASKS}/{name}/status", json={"status": status},
                                 headers={"Content-Type": "application/merge-patch+json"}) as response:
            await response.read()
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        event = {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": f"{name}.", "namespace": NS},
                 "involvedObject": {"apiVersion": task["apiVersion"], "kind": task["kind"], "name": name,
                                    "namespace": NS, "uid": task["metadata"].get("uid", "")},
                 "reason": "Scheduled", "message": f"Job xt-{name} created (Container isolation)", "type": "Normal",
                 "source": {"component": "expbuild-isolation"}, "reportingComponent": "expbuild-isolation",
                 "reportingInstance": "reflex", "firstTimestamp": now, "lastTimestamp": now, "eventTime": None}
        async with session.post(f"{url}/api/v1/namespaces/{NS}/events", json=event) as response:
            await response.read()

    async def watch(session: aiohttp.ClientSession, path: str, pending: set[asyncio.Task[None]]) -> None:
        async with session.get(f"{url}{path}", params={"watch": "true"}) as response:
            async for line in response.content:
                event = json.loads(line) if line.strip() else {}
                if path.endswith("executiontasks") and event.get("type") == "ADDED":
                    job = asyncio.create_task(answer(session, event["object"]))
                    pending.add(job)
                    job.add_done_callback(pending.discard)

    async def main() -> None:
        pending: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            await asyncio.gather(*(watch(session, path, pending) for path in watches))

    asyncio.run(main())


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


class Harness:
    """One emulator, one child process answering it, and the clocks and tallies of its phases."""

    def __init__(self, server: Any, role: str, budget: float) -> None:
        from tests.controller.conftest import declare_resources

        self.server, self.role, self.began, self.budget = server, role, time.monotonic(), budget
        declare_resources(server, namespaces=(NS,))
        self.job_seen: dict[str, float] = {}
        self.called: dict[str, float] = {}    # create call made
        self.created: dict[str, float] = {}   # create call returned
        self.counter = itertools.count()
        self.phases: dict[str, Any] = {}
        server["post", JOBS] << self.record
        server["post", TASKS] << self.note_resource
        self.task_resource: Any = None
        self.tally = count_requests(server)
        forget_served_requests(server)  # (outermost: it also forgets the Events count_requests answers itself)
        self.child = subprocess.Popen([sys.executable, __file__, f"--{role}", str(server.url).rstrip("/")],
                                      env=os.environ | {"PYTHONPATH": str(ROOT / "operator")},
                                      stderr=subprocess.DEVNULL)  # its shutdown noise would bury the JSON

    def note_resource(self, request: Any) -> Any:
        self.task_resource = request.resource  # the emulator's key for tasks, for ``instant``
        return request.data

    def record(self, request: Any) -> Any:
        self.job_seen.setdefault(request.data["metadata"]["name"], time.monotonic())
        return request.data

    def close(self) -> None:
        self.child.kill()
        self.child.wait(30)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.began)

    async def started(self) -> None:
        """Until the child watches tasks (plus a moment for the other watches an operator opens)."""
        await _wait(lambda: self.tally["WATCH executiontasks"] > 0, 30)
        await asyncio.sleep(2 if self.role == "operator" else 0.5)

    async def create(self) -> str:
        i = next(self.counter)
        name = f"xt-t{i:05d}"
        self.called[name] = time.monotonic()
        async with self.server.post(TASKS, json=body(i)) as response:
            assert response.status < 400, await response.text()
        self.created[name] = time.monotonic()   # the clock starts when the create call returns
        return name

    async def burst(self, size: int) -> list[str]:
        return list(await asyncio.gather(*(self.create() for _ in range(size))))

    async def instant(self, size: int) -> list[str]:
        """Put straight into the emulator's store, each with its ADDED event, and no HTTP: creation returns at once.

        What an API server that takes 200 creates within a few milliseconds would look like to the operator: the
        latency is then the operator's own (and the emulator's serving of its requests), not the queue of creates.
        Uses KMock's internals (``_objects``, ``_buses``, ``_lock``), as its own CREATE handling does.
        """
        server, names = self.server, []
        assert self.task_resource is not None, "one task must have been created through the API first"
        async with server._lock:
            for _ in range(size):
                i = next(self.counter)
                task = body(i)
                name = f"xt-{task['metadata']['name']}"
                key = (self.task_resource, NS, task["metadata"]["name"])
                server._objects[key] = task
                self.called[name] = self.created[name] = time.monotonic()
                await server._buses[self.task_resource].put({"type": "ADDED", "object": server._objects[key].last.raw})
                names.append(name)
        return names

    async def back_to_back(self, size: int) -> list[str]:
        """Created one after the other, each call awaited, as the issue's real-cluster run created them."""
        return [await self.create() for _ in range(size)]

    async def phase(self, label: str, run: Callable[[], Awaitable[list[str]]], timeout: float) -> None:
        me, pid = os.getpid(), self.child.pid
        cpu0 = (cpu_seconds(me), cpu_seconds(pid))
        counted = Counter(self.tally)
        t0 = time.monotonic()
        names = await run()
        done = await _wait(lambda: all(n in self.job_seen for n in names), max(1.0, min(timeout, self.left())))
        wall = time.monotonic() - t0
        cpu1 = (cpu_seconds(me), cpu_seconds(pid))
        reached = [self.job_seen[n] - self.created[n] for n in names if n in self.job_seen]
        # The same from the moment the create call was made: in a burst this includes the emulator's own
        # queue of creates (it runs in this process), which a real API server's clients also wait through.
        from_call = [self.job_seen[n] - self.called[n] for n in names if n in self.job_seen]
        # The tail of the phase (status patches, which wait for the Jobs of a burst, and Events) before counting
        patched = "PATCH executiontasks/status"
        await _wait(lambda: self.tally[patched] - counted[patched] >= len(names), 10)
        await asyncio.sleep(0.5)
        cpu2 = cpu_seconds(pid)
        self.phases[label] = {
            "tasks": len(names), "jobs": len(reached), "complete": done,
            "creation_to_job_seconds": summary(reached), "create_call_to_job_seconds": summary(from_call),
            "wall_seconds": round(wall, 2),
            "cpu_seconds": {"emulator": round(cpu1[0] - cpu0[0], 2), self.role: round(cpu1[1] - cpu0[1], 2)},
            f"{self.role}_cpu_ms_per_task": round(1000 * (cpu2 - cpu0[1]) / max(1, len(names)), 2),
            "requests_per_task": per_task(counted, self.tally, len(names))}
        print(json.dumps({label: self.phases[label]}), file=sys.stderr)


async def measure_floor(server: Any, *, bursts: tuple[int, ...] = BURSTS) -> dict[str, Any]:
    """The peer: the same bursts answered by the reflex."""
    harness = Harness(server, "reflex", budget=60)
    try:
        await harness.started()
        for size in bursts:
            await harness.phase(f"floor_burst_{size}", lambda size=size: harness.burst(size), 30)
        await harness.phase(f"floor_back_to_back_{BACK_TO_BACK}", lambda: harness.back_to_back(BACK_TO_BACK), 30)
        await harness.phase(f"floor_instant_{INSTANT}", lambda: harness.instant(INSTANT), 30)
        return harness.phases
    finally:
        harness.close()


async def measure(server: Any, *, single: int = 20, bursts: tuple[int, ...] = BURSTS, total: int = 1000,
                  budget: float = 170.0) -> dict[str, Any]:
    """The operator's phases."""
    harness = Harness(server, "operator", budget)
    try:
        await harness.started()
        idle_rss = rss_bytes(harness.child.pid)

        async def one_by_one() -> list[str]:
            names = []
            for _ in range(single):
                name = await harness.create()
                await _wait(lambda: name in harness.job_seen, min(10.0, max(1.0, harness.left())))
                names.append(name)
            return names

        await harness.phase("single", one_by_one, 60)
        for size in bursts:
            await harness.phase(f"burst_{size}", lambda size=size: harness.burst(size), 60)
        await harness.phase(f"back_to_back_{BACK_TO_BACK}", lambda: harness.back_to_back(BACK_TO_BACK), 60)
        await harness.phase(f"instant_{INSTANT}", lambda: harness.instant(INSTANT), 60)

        async def scale() -> list[str]:
            names: list[str] = []
            while len(harness.created) < total and harness.left() > 5:  # the emulator chokes on 800 POSTs at once
                names += await harness.burst(min(100, total - len(harness.created)))
            return names

        await harness.phase("scale", scale, harness.left())
        end_rss = rss_bytes(harness.child.pid)
        await asyncio.sleep(6)  # kopf ends an object's worker after settings.batching.idle_timeout (5 s)
        return {
            "benchmark": "operator_kmock",
            "phases": harness.phases,
            "tasks_created": len(harness.created),
            "jobs_created": len(harness.job_seen),
            "operator_rss_bytes": end_rss,
            "operator_rss_mib": round(end_rss / 2**20, 1),
            "operator_rss_settled_mib": round(rss_bytes(harness.child.pid) / 2**20, 1),
            "operator_rss_idle_mib": round(idle_rss / 2**20, 1),
            "total_seconds": round(time.monotonic() - harness.began, 1),
        }
    finally:
        harness.close()


async def measure_both() -> dict[str, Any]:
    """The peer's floor first, then the operator, each on a fresh emulator; and the operator above the floor."""
    floor = await on_emulator(measure_floor)
    result = await on_emulator(measure)
    p50 = {label: (phase.get("creation_to_job_seconds") or {}).get("p50") for label, phase in result["phases"].items()}
    floor_p50 = {label: (phase.get("creation_to_job_seconds") or {}).get("p50") for label, phase in floor.items()}
    result["phases"] = floor | result["phases"]
    result["operator_above_floor_p50_seconds"] = {  # every operator phase the peer ran too
        label: round(p50[label] - floor_p50[f"floor_{label}"], 4)
        for label in p50 if p50[label] is not None and floor_p50.get(f"floor_{label}") is not None}
    return result


def count_requests(server: Any) -> Counter[str]:
    """A live tally of the requests the emulator serves, by ``VERB resource`` (a watch counts once, when opened).

    Events are accepted (201) and not stored: KMock cannot store an object named by ``generateName``, and would
    answer every Event after the first with a 409 carrying a formatted traceback, work no API server does.
    """
    from aiohttp import web

    tally: Counter[str] = Counter()
    base = type(server)

    class Counting(base):  # type: ignore[misc,valid-type]
        __slots__ = ()

        async def _handle(self, request: Any) -> Any:
            kind = _kind_of(request)
            tally[kind] += 1
            if kind == "POST events":
                return web.json_response(request.data, status=201)
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
async def test_operator_throughput() -> None:
    print(json.dumps(await measure_both()))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--operator"]:
        operator_child(sys.argv[2])
    elif sys.argv[1:2] == ["--reflex"]:
        reflex_child(sys.argv[2])
    else:
        print(json.dumps(asyncio.run(measure_both()), indent=2))
