"""One behaviour for spec.workingDir everywhere (issue #14): a missing directory is created, on every
backend as by the Job path's init container (tests/kube/test_supervisor.py); an input file in its way
is a clear InvalidTask, never `internal error: FileExistsError`."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from expbuild_isolation.api.task import Phase
from expbuild_isolation.executors.base import ExecutorUnavailable
from expbuild_isolation.worker.chain import build_executor
from expbuild_isolation.worker.config import WorkerConfig
from expbuild_isolation.worker.local import parse_task, run_task

from ..isolation.conftest import required_backends
from .manifests import task

ROOT = Path(__file__).resolve().parents[2]


async def _backend(name: str):
    try:
        executor = build_executor(name, WorkerConfig())
        await executor.health_check()
    except (ImportError, ExecutorUnavailable) as exc:
        if name in required_backends():
            pytest.fail(f"backend {name} is required (EXPBUILD_REQUIRE_BACKENDS) but unavailable: {exc}")
        pytest.skip(f"backend {name} unavailable: {exc}")
    return executor


def _spec_for(name: str, **spec):
    host = name == "host"
    return task(**spec, isolation={"minimum": "None", "seccompProfile": "Unconfined" if host else "RuntimeDefault"},
                network={"policy": "Full" if host else "None"})


@pytest.mark.parametrize("name", ["host", "namespace", "docker", "podman"])
async def test_a_missing_working_dir_is_created_on_every_backend(name, tmp_path):
    executor = await _backend(name)
    manifest = _spec_for(name, command=["sh", "-c", "pwd; echo made > here.txt"], workingDir="deep/er",
                         inputs=[{"path": "deep/in.txt", "content": "x"}], outputs={"paths": ["deep/er/here.txt"]})
    config = WorkerConfig(work_dir=tmp_path / "work")
    status = await run_task(parse_task(manifest), [executor], config)
    assert status.phase is Phase.SUCCEEDED, status.message or status.logs
    assert status.executor == name
    assert status.logs.stdout_tail.rstrip().endswith("/deep/er")
    # judged from the host: the file the command wrote in its working dir, collected and digested by us
    [output] = status.outputs
    assert output.path == "deep/er/here.txt" and output.sha256 == hashlib.sha256(b"made\n").hexdigest()


async def test_a_working_dir_that_is_an_input_file_is_a_clear_refusal(tmp_path):
    executor = await _backend("host")
    manifest = _spec_for("host", command=["true"], workingDir="f/sub", inputs=[{"path": "f", "content": "x"}])
    status = await run_task(parse_task(manifest), [executor], WorkerConfig(work_dir=tmp_path / "work"))
    assert status.phase is Phase.ERROR and status.reason == "InvalidTask"
    assert status.message == "spec.workingDir: 'f/sub' runs through 'f', which is an input file, not a directory"
    assert str(tmp_path) not in status.message


def test_the_cli_says_so_in_the_status_not_an_internal_error(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(_spec_for("host", command=["true"], workingDir="f",
                                             inputs=[{"path": "f", "content": "x"}])))
    result = subprocess.run([sys.executable, "-m", "expbuild_isolation.cli", "run", str(path), "--executor", "host",
                             "-o", "json"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 125 and "internal error" not in result.stderr, result.stderr
    status = json.loads(result.stdout)["status"]
    assert status["phase"] == "Error" and "spec.workingDir: 'f' runs through 'f'" in status["message"]


async def test_an_input_under_another_inputs_file_names_no_host_path(tmp_path):
    executor = await _backend("host")
    manifest = _spec_for("host", command=["true"], inputs=[{"path": "a", "content": "x"},
                                                           {"path": "a/b", "content": "y"}])
    status = await run_task(parse_task(manifest), [executor], WorkerConfig(work_dir=tmp_path / "work"))
    assert status.phase is Phase.ERROR and status.reason == "InvalidTask"
    assert status.message.startswith("spec.inputs: ") and str(tmp_path) not in status.message
