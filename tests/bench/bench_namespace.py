"""Start latency and CPU overhead of the namespace executor; prints JSON.

    python tests/bench/bench_namespace.py [-n 50]

Start latency: /bin/true via NamespaceExecutor with full isolation (PID, mount,
net, UTS, IPC namespaces, pivot_root, cgroup with memory/pids/cpu limits,
expbuild-default seccomp, uid 65534) beside plain subprocess and bwrap
--unshare-all, measured in the same run. CPU: a fixed shell loop inside versus
on the host, seven times each in alternating order, as wall time (what a user
waits for; on a shared machine it also measures who gets the CPUs) and as CPU
time (the task cgroup's usage inside, the child's rusage outside: the cost of
the isolation itself, whoever else is running).

Debugging a slow start: EXPBUILD_NSINIT_TRACE=/tmp/trace.log makes the
executor, the zygote, the waiters and every pid 1 append "<slot> <stage>
<CLOCK_MONOTONIC ns>" lines, one set per task.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import time

from expbuild_isolation.executors.base import ExecutionRequest, ResourceLimits
from expbuild_isolation.executors.config import NamespaceConfig
from expbuild_isolation.executors.namespace.launch import DEFAULT_PATH
from expbuild_isolation.executors.namespace.executor import NamespaceExecutor
from expbuild_isolation.executors.workspace import create_workspace, remove_workspace

BWRAP = ["bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr", "--ro-bind", "/lib", "/lib", "--ro-bind", "/lib64",
         "/lib64", "--ro-bind", "/bin", "/bin", "--proc", "/proc", "--dev", "/dev", "true"]
CPU_LOOP = "i=0; while [ $i -lt 1500000 ]; do i=$((i+1)); done"
TASK_ENV = {"PATH": DEFAULT_PATH, "HOME": "/workspace", "TMPDIR": "/tmp"}


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"n": len(samples), "median_ms": round(statistics.median(ordered) * 1000, 2),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 2),
            "min_ms": round(ordered[0] * 1000, 2)}


def timed_subprocess(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env)
    return time.perf_counter() - start


def timed_subprocess_cpu(argv: list[str]) -> tuple[float, float]:
    """Wall time and the child's user+system CPU time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = timed_subprocess(argv, env=TASK_ENV)   # the environment a task gets: dash is slower with a big one
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


async def main(n: int) -> dict:
    load_at_start = list(os.getloadavg())
    # A parent of its own: under cgroup v1 every task under one parent shares that parent's CPU weight, so
    # sandboxes of a test suite running meanwhile (the default parent, "expbuild") would slow ours down.
    executor = NamespaceExecutor(NamespaceConfig(cgroup_parent="expbuild-bench"))
    await executor.warmup()
    workspace = create_workspace()
    limits = ResourceLimits(cpu_cores=2, memory_bytes=256 << 20, max_processes=64)

    async def in_sandbox(argv: tuple[str, ...]) -> tuple[float, float]:
        start = time.perf_counter()
        result = await executor.execute(ExecutionRequest(task_id="bench", argv=argv, workspace=workspace,
                                                         limits=limits, seccomp_profile="expbuild-default"))
        assert result.exit_code == 0, result
        return time.perf_counter() - start, result.stats.cpu_time_seconds or 0.0

    try:
        for _ in range(5):   # warm the zygote, page cache and bwrap
            await in_sandbox(("/bin/true",))
            timed_subprocess(["/bin/true"])
            if shutil.which("bwrap"):
                timed_subprocess(BWRAP)
        ns, plain, bwrap = [], [], []
        for _ in range(n):   # interleaved so that all three see the same machine state
            ns.append((await in_sandbox(("/bin/true",)))[0])
            plain.append(timed_subprocess(["/bin/true"]))
            if shutil.which("bwrap"):
                bwrap.append(timed_subprocess(BWRAP))
        cpu_inside, cpu_host = [], []
        for i in range(7):   # alternating which goes first, so a load change does not favour one side
            for side in (("inside", "host") if i % 2 == 0 else ("host", "inside")):
                if side == "inside":
                    cpu_inside.append(await in_sandbox(("/bin/sh", "-c", CPU_LOOP)))
                else:
                    cpu_host.append(timed_subprocess_cpu(["/bin/sh", "-c", CPU_LOOP]))
    finally:
        remove_workspace(workspace)
    inside, host = statistics.median(w for w, _ in cpu_inside), statistics.median(w for w, _ in cpu_host)
    inside_cpu, host_cpu = statistics.median(c for _, c in cpu_inside), statistics.median(c for _, c in cpu_host)
    return {
        "start_latency_true": {"namespace_executor_full_isolation": summary(ns), "subprocess": summary(plain),
                               "bwrap_unshare_all": summary(bwrap) if bwrap else None},
        "cpu_workload": {"workload": CPU_LOOP, "namespace_median_s": round(inside, 3), "host_median_s": round(host, 3),
                         "overhead_percent": round((inside / host - 1) * 100, 1),
                         "namespace_cpu_median_s": round(inside_cpu, 3), "host_cpu_median_s": round(host_cpu, 3),
                         "cpu_time_overhead_percent": round((inside_cpu / host_cpu - 1) * 100, 1),
                         # the least CPU time of each side: the intrinsic cost, least disturbed by neighbours
                         "cpu_time_min_overhead_percent": round(
                             (min(c for _, c in cpu_inside) / min(c for _, c in cpu_host) - 1) * 100, 1)},
        "load_average_at_start": load_at_start,
        "load_average_at_end": list(os.getloadavg()),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=50)
    print(json.dumps(asyncio.run(main(parser.parse_args().n)), indent=2))
