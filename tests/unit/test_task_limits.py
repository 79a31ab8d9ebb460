"""A worker's own caps ([task_limits]) are checked when a task runs: over a cap, the task ends in
Error/LimitTooLarge naming the field and the cap, and never starts (issue #14)."""

import json
import subprocess
import sys
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from expbuild_isolation.api.task import Phase
from expbuild_isolation.executors.host import HostExecutor
from expbuild_isolation.worker.config import ConfigError, WorkerConfig, load_worker_config, parse_worker_config
from expbuild_isolation.worker.local import parse_task, run_task
from expbuild_isolation.worker.task_limits import machine_cpus, machine_memory

from .manifests import task

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def marker():
    """A path the host task (which runs as nobody when the tests run as root) can create: its directory is 1777."""
    drop = Path(tempfile.mkdtemp(prefix="expbuild-limits-"))
    drop.chmod(0o1777)
    yield drop / "ran"
    shutil.rmtree(drop)


def host_task(marker: Path, **spec):
    return parse_task(task(command=["sh", "-c", f"touch {marker}"], isolation={"minimum": "None",
                           "seccompProfile": "Unconfined"}, network={"policy": "Full"}, **spec))


async def run(spec_task, config: WorkerConfig):
    return await run_task(spec_task, [HostExecutor()], config)


@pytest.mark.parametrize("field, spec, caps, fragment", [
    ("cpu", {"resources": {"cpu": "3"}}, {"cpu": "2"}, "spec.resources.cpu: '3' is more than this worker allows (2 CPUs"),
    ("memory", {"resources": {"memory": "2Gi"}}, {"memory": "1Gi"}, "spec.resources.memory: '2Gi' is more than this "
                                                                     "worker allows (1Gi"),
    ("disk", {"resources": {"disk": "10Gi"}}, {"disk": "1Gi"}, "spec.resources.disk: '10Gi' is more than"),
    ("pids", {"resources": {"pids": 5000}}, {"pids": 4096}, "spec.resources.pids: 5000 is more than this worker allows"),
    ("timeout", {"timeout": "2h"}, {"timeout": "1h"}, "spec.timeout: '2h' is more than this worker allows (3600s"),
])
async def test_a_task_over_a_configured_cap_ends_in_error_and_never_starts(tmp_path, marker, field, spec, caps, fragment):
    config = parse_worker_config({"work_dir": str(tmp_path / "w"), "task_limits": caps})
    status = await run(host_task(marker, **spec), config)
    assert status.phase is Phase.ERROR and status.reason == "LimitTooLarge"
    assert fragment in status.message and f"task_limits.{field}" in status.message
    assert not marker.exists()


async def test_by_default_the_caps_are_this_machine(tmp_path, marker):
    config = WorkerConfig(work_dir=tmp_path / "w")
    too_many = str(int(machine_cpus()) + 1)
    status = await run(host_task(marker, resources={"cpu": too_many}), config)
    assert status.reason == "LimitTooLarge" and f"({machine_cpus():g} CPUs" in status.message
    status = await run(host_task(marker, resources={"memory": machine_memory() + 1}), config)
    assert status.reason == "LimitTooLarge" and "spec.resources.memory" in status.message
    assert not marker.exists()


async def test_a_task_within_the_caps_runs(tmp_path, marker):
    config = parse_worker_config({"work_dir": str(tmp_path / "w"), "task_limits": {"timeout": "1h"}})
    status = await run(host_task(marker, timeout="59m"), config)
    assert status.phase is Phase.SUCCEEDED and marker.exists()


@pytest.mark.parametrize("body, fragment", [
    ("[task_limits]\ncpu = 'lots'\n", "task_limits.cpu"),
    ("[task_limits]\ntimeout = '1 hour'\n", "task_limits.timeout"),
    ("[task_limits]\npids = 0\n", "task_limits.pids"),
    ("[task_limits]\ngpus = 1\n", "task_limits.gpus: unknown key"),
])
def test_bad_caps_name_the_key(tmp_path, marker, body, fragment):
    path = tmp_path / "w.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_worker_config(path)


def test_the_cli_reports_a_cap_as_a_status_not_an_internal_error(tmp_path, marker):
    (tmp_path / "w.toml").write_text(f"work_dir = '{tmp_path / 'w'}'\n[task_limits]\ncpu = '1'\n")
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task(command=["true"], resources={"cpu": "2"}, isolation={"minimum": "None"})))
    result = subprocess.run([sys.executable, "-m", "expbuild_isolation.cli", "run", str(path), "--config",
                             str(tmp_path / "w.toml"), "-o", "json"], capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    assert result.returncode == 125, result.stderr
    status = json.loads(result.stdout)["status"]
    assert status["phase"] == "Error" and status["reason"] == "LimitTooLarge"
