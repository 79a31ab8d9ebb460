"""No sandbox outlives its worker, or its own deadline: a node agent killed or stuck mid-task leaves nothing.

The worker ends a task at its timeout. These tests take the worker away (SIGKILL) or freeze it (SIGSTOP) while
a task runs, and judge from the host that the task's processes are gone: at once for a killed worker, within
the timeout plus the sandbox's own grace for a frozen one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the namespace executor needs root")


def processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if marker.encode() in handle.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def wait_for(condition, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def start_worker(tmp_path: Path, executor: str, timeout: str) -> tuple[subprocess.Popen[bytes], str]:
    marker = f"900.{uuid.uuid4().int % 10**8}"
    task = {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask", "metadata": {"name": "lifetime"},
            "spec": {"command": ["sh", "-c", f"sleep {marker} & sleep {marker}; wait"], "timeout": timeout,
                     "image": "localhost/expbuild-busybox:latest"}}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    worker = subprocess.Popen([sys.executable, "-m", "expbuild_isolation.cli", "run", str(path),
                               "--executor", executor], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    assert wait_for(lambda: len(processes_with(marker)) >= 2, 30), "the task never started (positive control)"
    return worker, marker


@needs_root
@pytest.mark.parametrize("executor", ["namespace"])
def test_a_killed_worker_takes_its_sandbox_with_it(tmp_path, executor):
    worker, marker = start_worker(tmp_path, executor, "20m")
    worker.kill()
    worker.wait()
    assert wait_for(lambda: not processes_with(marker), 10), f"left running: {processes_with(marker)}"


@needs_root
@pytest.mark.parametrize("executor", ["namespace"])
def test_a_frozen_worker_cannot_keep_a_task_past_its_deadline(tmp_path, executor):
    worker, marker = start_worker(tmp_path, executor, "3s")
    os.kill(worker.pid, signal.SIGSTOP)   # alive, but it will not enforce the timeout
    try:
        assert wait_for(lambda: not processes_with(marker), 3 + 10 + 10), f"left running: {processes_with(marker)}"
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
