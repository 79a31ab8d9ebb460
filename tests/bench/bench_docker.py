"""Start latency and CPU overhead of DockerExecutor, beside plain `docker run --rm` in the same run.

    python tests/bench/bench_docker.py [--n 25] [--engine docker|podman]

Prints one JSON object: seconds per task (median, p95) for a cold DockerExecutor
task, `docker run --rm` with the same hardening flags, a warm-pool task, and a
fixed CPU-bound shell loop inside the container versus on the host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time
import uuid

from expbuild_isolation.executors.base import ExecutionRequest
from expbuild_isolation.executors.config import DockerConfig, PodmanConfig
from expbuild_isolation.executors.containers.docker import DockerExecutor
from expbuild_isolation.executors.containers.podman import PodmanExecutor
from expbuild_isolation.executors.workspace import create_workspace, remove_workspace

LOOP = "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done"


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"n": len(samples), "median": round(statistics.median(ordered), 4),
            "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 4)}


def make(engine: str, **settings) -> DockerExecutor:  # type: ignore[no-untyped-def]
    settings["worker_id"] = f"bench-{uuid.uuid4().hex[:6]}"
    return PodmanExecutor(PodmanConfig(**settings)) if engine == "podman" else DockerExecutor(DockerConfig(**settings))


async def timed_tasks(executor: DockerExecutor, argv: tuple[str, ...], n: int, *, refill: bool = False,
                      cpu: list[float] | None = None) -> list[float]:
    samples = []
    for i in range(n):
        if refill:
            await executor.pool.fill()  # not timed: measure a task that finds a warm container
        ws = create_workspace()
        try:
            began = time.perf_counter()
            result = await executor.execute(ExecutionRequest(task_id=f"bench-{i}", argv=argv, workspace=ws))
            samples.append(time.perf_counter() - began)
            assert result.exit_code == 0, result
            if cpu is not None:
                cpu.append(result.stats.cpu_time_seconds or 0.0)
        finally:
            remove_workspace(ws)
    return samples


def cli_runs(executor: DockerExecutor, argv: list[str], n: int) -> list[float]:
    """`<engine> run --rm` with the flags the executor uses (seccomp from the same profile, as a file)."""
    from expbuild_isolation.executors.containers.podman import PodmanExecutor as _P
    profile = _P.seccomp(executor, "RuntimeDefault").split("=", 1)[1]  # writes the profile as a file
    config = executor.config
    samples = []
    for _ in range(n):
        ws = create_workspace()
        try:
            command = [executor.name, "run", "--rm", "--network", "none", "--read-only",
                       "--tmpfs", f"/tmp:rw,noexec,nosuid,nodev,size={config.tmp_size_bytes}",
                       "--security-opt", "no-new-privileges", "--security-opt", f"seccomp={profile}",
                       "--cap-drop", "ALL", "--pids-limit", "1024", "--ipc", "private", "-u", "65534:65534",
                       "-v", f"{ws}:/workspace", "-w", "/workspace", config.image, *argv]
            began = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            samples.append(time.perf_counter() - began)
        finally:
            remove_workspace(ws)
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=25)
    parser.add_argument("--engine", choices=("docker", "podman"), default="docker")
    args = parser.parse_args()

    cold = make(args.engine)
    await cold.warmup()
    await timed_tasks(cold, ("true",), 2)  # connection and thread pools up
    cold_samples = await timed_tasks(cold, ("true",), args.n)
    cli_samples = cli_runs(cold, ["true"], args.n)
    inside_cpu: list[float] = []
    inside = await timed_tasks(cold, ("sh", "-c", LOOP), 7, cpu=inside_cpu)
    await cold.close()
    host, host_cpu = [], []
    for _ in range(7):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        subprocess.run(["/bin/busybox", "sh", "-c", LOOP], check=True)
        host.append(time.perf_counter() - began)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        host_cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)

    warm = make(args.engine, pool_size=2)
    await warm.warmup()
    warm_samples = await timed_tasks(warm, ("true",), args.n, refill=True)
    await warm.close()

    report = {
        "engine": args.engine,
        "cold_executor_start_s": summary(cold_samples),
        f"{args.engine}_run_rm_s": summary(cli_samples),
        "warm_pool_start_s": summary(warm_samples),
        "warm_over_run_rm_median": round(statistics.median(warm_samples) / statistics.median(cli_samples), 3),
        "cold_over_run_rm_median": round(statistics.median(cold_samples) / statistics.median(cli_samples), 3),
        "cpu_loop_inside_s": summary(inside),
        "cpu_loop_host_s": summary(host),
        "cpu_loop_inside_cpu_time_s": summary(inside_cpu),
        "cpu_loop_host_cpu_time_s": summary(host_cpu),
        "cpu_time_ratio_median": round(statistics.median(inside_cpu) / statistics.median(host_cpu), 3),
        "wall_ratio_median_incl_start": round(statistics.median(inside) / statistics.median(host), 3),
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    asyncio.run(main())
