"""A starting REAPI worker sweeps what a killed one of the same worker id left, before it serves.

A container of this worker id whose owner process is gone keeps running until something removes it (its
own deadline aside); judged from the host with ``docker ps``, with the control that it runs before the
worker starts. No build server is needed: the sweep comes before the first connection.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.executors.container_cases import left_by_a_killed_worker, running_of, usable

from .stack import REPO, free_port

IMAGE = "localhost/expbuild-busybox:latest"


async def test_a_starting_reapi_worker_removes_the_container_a_killed_one_left(tmp_path: Path):
    await usable("docker")
    worker_id = f"reapi-{uuid.uuid4().hex[:8]}"
    left = left_by_a_killed_worker("docker", worker_id, IMAGE)

    def running() -> list[str]:
        return running_of("docker", worker_id)

    config = tmp_path / "worker.toml"
    config.write_text(f'worker_id = "{worker_id}"\nwork_dir = "{tmp_path / "work"}"\n'
                      f'[executor]\ntype = "docker"\n[executor.docker]\nimage = "{IMAGE}"\n'
                      f'worker_id = "{worker_id}"\n')
    log = tmp_path / "worker.log"
    worker = None
    try:
        assert running() == [left]   # the control: with no worker at all, it runs
        with open(log, "wb") as output:
            worker = subprocess.Popen(
                [sys.executable, "-m", "expbuild_isolation.cli", "reapi-worker", "--config", str(config),
                 "--server", f"grpc://127.0.0.1:{free_port()}"],   # nothing listens: it retries, and serves nothing
                stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO / "operator")})
        deadline = time.monotonic() + 60
        while running() and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.2)
        assert worker.poll() is None, f"the worker exited: {log.read_text()[-2000:]}"
        assert running() == [], f"the started worker left its predecessor's container running: {log.read_text()[-2000:]}"
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        subprocess.run(["docker", "rm", "-f", left], capture_output=True, check=False)

