"""No sandbox outlives its worker, or its own deadline: a node agent killed or stuck mid-task leaves nothing.

The worker ends a task at its timeout. These tests take the worker away (SIGKILL) or freeze it (SIGSTOP) while
a task runs, and judge from the host that the task's processes are gone: at once for a killed worker, within
the timeout plus the sandbox's own grace for a frozen one. The control: the task's processes were there.

Every backend that keeps a sandbox: the namespace one, Docker and Podman with cold containers (a worker is
``expbuild-isolation run``), and Docker's warm pool (a worker is a small program that fills the pool first,
since ``run`` starts every task cold).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from expbuild_isolation.executors.base import ExecutorUnavailable
from expbuild_isolation.selftest.host_side import processes_with
from expbuild_isolation.worker.chain import build_executor
from expbuild_isolation.worker.config import load_worker_config

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/expbuild-busybox:latest"
EXECUTORS = ["namespace", "docker", "podman", "docker-warm"]
ENGINES = ("docker", "podman")

# A worker that starts its one task in a warm container: argv[1] is the worker file, argv[2] a file holding
# the task's script (not the script: the worker's own command line must not carry the marker), argv[3] its
# timeout in seconds.
WARM_WORKER = """
import asyncio, sys
from expbuild_isolation.executors.base import ExecutionRequest
from expbuild_isolation.executors.workspace import create_workspace
from expbuild_isolation.worker.chain import build_executor
from expbuild_isolation.worker.config import load_worker_config

async def main():
    config = load_worker_config(sys.argv[1])
    executor = build_executor("docker", config)
    await executor.warmup()
    assert executor.pool.ready_count() == 2, "no warm containers"
    request = ExecutionRequest(task_id="lifetime", argv=("sh", "-c", open(sys.argv[2]).read()), workspace=create_workspace(config.work_dir),
                               timeout_seconds=float(sys.argv[3]))
    result = await executor.execute(request)
    assert executor.pool.used, "the task did not run in the warm container"
    print(result)

asyncio.run(main())
"""


def required(backend: str) -> bool:
    return backend in {b.strip() for b in os.environ.get("EXPBUILD_REQUIRE_BACKENDS", "").split(",")}


def worker_file(tmp_path: Path, executor: str) -> tuple[Path, str]:
    """A worker TOML for ``executor`` with a worker id of its own (which labels every container it makes)."""
    backend = executor.removesuffix("-warm")
    worker_id = f"lifetime-{uuid.uuid4().hex[:8]}"
    text = f'work_dir = "{tmp_path / "work"}"\n[executor]\ntype = "{backend}"\n'
    if backend in ENGINES:
        text += f'[executor.{backend}]\nworker_id = "{worker_id}"\nimage = "{IMAGE}"\n'
        text += "pool_size = 2\n" if executor.endswith("-warm") else ""   # one runs the task, one waits
    path = tmp_path / "worker.toml"
    path.write_text(text)
    return path, worker_id


def skip_unless_usable(executor: str, config_path: Path) -> None:
    backend = executor.removesuffix("-warm")
    if backend == "namespace" and os.geteuid() != 0:
        pytest.skip("the namespace executor needs root")
    if backend not in ENGINES:
        return
    engine = build_executor(backend, load_worker_config(config_path))
    try:
        asyncio.run(engine.health_check())
    except ExecutorUnavailable as exc:
        if required(backend):
            pytest.fail(f"{backend} is required (EXPBUILD_REQUIRE_BACKENDS) but unavailable: {exc}")
        pytest.skip(f"{backend} unavailable: {exc}")


def wait_for(condition, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def running_containers(executor: str, worker_id: str) -> list[str]:
    """The engine's own answer: containers of this worker still running (warm ones waiting for a task too)."""
    engine = executor.removesuffix("-warm")
    if engine not in ENGINES:
        return []
    return subprocess.run([engine, "ps", "-q", "--filter", f"label=expbuild.io/worker-id={worker_id}"],
                          capture_output=True, text=True, check=True).stdout.split()


def remove_containers(executor: str, worker_id: str) -> None:
    """What the killed worker could not remove (a restarted worker's sweep would)."""
    engine = executor.removesuffix("-warm")
    if engine in ENGINES:
        names = subprocess.run([engine, "ps", "-aq", "--filter", f"label=expbuild.io/worker-id={worker_id}"],
                               capture_output=True, text=True, check=True).stdout.split()
        if names:
            subprocess.run([engine, "rm", "-f", *names], capture_output=True, check=False)


@pytest.fixture
def worker(tmp_path):  # type: ignore[no-untyped-def]
    """start(executor, timeout) -> (the worker process, the marker in its task's command lines, its worker id)."""
    started: list[tuple[subprocess.Popen[bytes], str, str]] = []

    def start(executor: str, timeout: str) -> tuple[subprocess.Popen[bytes], str, str]:
        config, worker_id = worker_file(tmp_path, executor)
        skip_unless_usable(executor, config)
        marker = f"900.{uuid.uuid4().int % 10**8}"
        script = f"sleep {marker} & sleep {marker}; wait"
        if executor.endswith("-warm"):
            (tmp_path / "script").write_text(script)
            argv = [sys.executable, "-c", WARM_WORKER, str(config), str(tmp_path / "script"), timeout.removesuffix("s")]
        else:
            task = {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask", "metadata": {"name": "lifetime"},
                    "spec": {"command": ["sh", "-c", script], "timeout": timeout, "image": IMAGE}}
            path = tmp_path / "task.yaml"
            path.write_text(yaml.safe_dump(task))
            argv = [sys.executable, "-m", "expbuild_isolation.cli", "run", str(path), "--config", str(config)]
        log = tmp_path / "worker.log"
        with open(log, "wb") as output:
            process = subprocess.Popen(argv, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
        started.append((process, executor, worker_id))
        assert wait_for(lambda: len(processes_with(marker)) >= 2, 60), \
            f"the task never started (positive control); the worker said: {log.read_text()[-2000:]}"
        return process, marker, worker_id

    yield start
    for process, executor, worker_id in started:
        if process.poll() is None:
            process.kill()
            process.wait()
        remove_containers(executor, worker_id)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_killed_worker_takes_its_sandbox_with_it(worker, executor):
    process, marker, worker_id = worker(executor, "1200s")
    process.kill()
    process.wait()
    assert wait_for(lambda: not processes_with(marker), 10), f"left running: {processes_with(marker)}"
    # and its warm containers waiting for tasks stop too
    assert wait_for(lambda: not running_containers(executor, worker_id), 10), \
        f"the engine says these still run: {running_containers(executor, worker_id)}"


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_frozen_worker_cannot_keep_a_task_past_its_deadline(worker, executor):
    process, marker, worker_id = worker(executor, "3s")
    os.kill(process.pid, signal.SIGSTOP)   # alive, but it will not enforce the timeout
    try:
        assert wait_for(lambda: not processes_with(marker), 3 + 10 + 10), f"left running: {processes_with(marker)}"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
