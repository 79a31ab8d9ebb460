"""Start latency and CPU overhead of the namespace executor; prints JSON.

    python tests/bench/bench_namespace.py [-n 50]

Start latency: /bin/true via NamespaceExecutor with full isolation (PID, mount,
net, UTS, IPC namespaces, pivot_root, cgroup with memory/pids/cpu limits,
expbuild-default seccomp, uid 65534) beside plain subprocess and bwrap
--unshare-all, measured in the same run. CPU: a fixed shell loop inside versus
on the host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import time

from expbuild_isolation.executors.base import ExecutionRequest, ResourceLimits
from expbuild_isolation.executors.config import NamespaceConfig
from expbuild_isolation.executors.namespace import NamespaceExecutor
from expbuild_isolation.executors.workspace import create_workspace, remove_workspace

BWRAP = ["bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr", "--ro-bind", "/lib", "/lib", "--ro-bind", "/lib64",
         "/lib64", "--ro-bind", "/bin", "/bin", "--proc", "/proc", "--dev", "/dev", "true"]
CPU_LOOP = "i=0; while [ $i -lt 1500000 ]; do i=$((i+1)); done"


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"n": len(samples), "median_ms": round(statistics.median(ordered) * 1000, 2),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 2),
            "min_ms": round(ordered[0] * 1000, 2)}


def timed_subprocess(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - start


async def main(n: int) -> dict:
    executor = NamespaceExecutor(NamespaceConfig())
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
        for _ in range(3):
            cpu_inside.append((await in_sandbox(("/bin/sh", "-c", CPU_LOOP)))[0])
            cpu_host.append(timed_subprocess(["/bin/sh", "-c", CPU_LOOP]))
    finally:
        remove_workspace(workspace)
    inside, host = statistics.median(cpu_inside), statistics.median(cpu_host)
    return {
        "start_latency_true": {"namespace_executor_full_isolation": summary(ns), "subprocess": summary(plain),
                               "bwrap_unshare_all": summary(bwrap) if bwrap else None},
        "cpu_workload": {"workload": CPU_LOOP, "namespace_median_s": round(inside, 3), "host_median_s": round(host, 3),
                         "overhead_percent": round((inside / host - 1) * 100, 1)},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=50)
    print(json.dumps(asyncio.run(main(parser.parse_args().n)), indent=2))
