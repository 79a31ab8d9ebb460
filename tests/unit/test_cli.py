"""`expbuild-isolation run` prints the status and exits with the task's own code; errors are one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HOST_ONLY = ["--executor", "host"]


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "expbuild_isolation.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def write_task(tmp_path, **spec):
    body = {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask", "metadata": {"name": "t"},
            "spec": {"network": {"policy": "Full"},
                     "isolation": {"minimum": "None", "seccompProfile": "Unconfined"}, **spec}}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_hello_example_succeeds_and_reports_executor_isolation_and_stats():
    result = cli("run", "manifests/examples/hello.yaml", "-o", "json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)["status"]
    assert status["phase"] == "Succeeded" and status["exitCode"] == 0
    assert status["executor"] and status["isolationLevel"]
    assert status["stats"]["cpuTimeSeconds"] is not None
    assert status["outputs"][0]["path"] == "greeting.txt"


@pytest.mark.parametrize("code", [0, 1, 3, 42])
def test_exit_code_mirrors_the_task(tmp_path, code):
    result = cli("run", str(write_task(tmp_path, command=["sh", "-c", f"exit {code}"])), *HOST_ONLY)
    assert result.returncode == code
    assert ("Succeeded" if code == 0 else "Failed") in result.stdout


def test_timeout_exits_124(tmp_path):
    result = cli("run", str(write_task(tmp_path, command=["sleep", "30"], timeout="1s")), *HOST_ONLY)
    assert result.returncode == 124
    assert "TimedOut" in result.stdout and "DeadlineExceeded" in result.stdout


def test_a_container_floor_with_only_the_host_ends_in_error_and_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = write_task(tmp_path, command=["sh", "-c", f"touch {marker}"])
    body = yaml.safe_load(path.read_text())
    body["spec"]["isolation"] = {"minimum": "Container"}
    body["spec"]["network"] = {"policy": "None"}
    path.write_text(yaml.safe_dump(body))
    result = cli("run", str(path), *HOST_ONLY, "-o", "yaml")
    assert result.returncode == 125
    status = yaml.safe_load(result.stdout)["status"]
    assert status["phase"] == "Error" and status["reason"] == "IsolationUnavailable"
    assert "below the task's minimum Container" in status["message"]
    assert not marker.exists()


def test_invalid_manifest_is_one_line_without_traceback(tmp_path):
    path = write_task(tmp_path, command=["true"], resources={"memory": "2GB"})
    result = cli("run", str(path))
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert 'spec.resources.memory' in result.stderr and 'did you mean "2Gi"' in result.stderr


def test_missing_task_file_is_a_clear_error(tmp_path):
    result = cli("run", str(tmp_path / "absent.yaml"))
    assert result.returncode == 125 and "no such file" in result.stderr


def test_bad_worker_config_names_the_key(tmp_path):
    config = tmp_path / "w.toml"
    config.write_text("[executor.host]\nbogus = 1\n")
    result = cli("run", "manifests/examples/hello.yaml", "--config", str(config))
    assert result.returncode == 125 and "executor.host.bogus: unknown key" in result.stderr


def test_output_symlink_escape_fails_the_task(tmp_path):
    path = write_task(tmp_path, command=["sh", "-c", "ln -s /etc/shadow leak"], outputs={"paths": ["leak"]})
    result = cli("run", str(path), *HOST_ONLY, "-o", "json")
    status = json.loads(result.stdout)["status"]
    assert status["phase"] == "Failed" and status["reason"] == "OutputRejected"
    assert "symlink" in status["message"] and status["outputs"] == []
    assert status["exitCode"] == 0 and result.returncode == 1  # never success for a failed task


def test_the_compile_example_reads_its_configmap_next_to_the_task():
    result = cli("run", "manifests/examples/compile.yaml", "-o", "json")
    status = json.loads(result.stdout)["status"]
    required = {"namespace", "docker", "podman"} & {b.strip() for b in os.environ.get(
        "EXPBUILD_REQUIRE_BACKENDS", "").split(",")}
    if status["reason"] == "IsolationUnavailable" and not required:  # e.g. not root and no container engine
        pytest.skip(f"no container-level executor on this machine: {status['message']}")
    assert status["phase"] == "Succeeded", status
    assert {o["path"] for o in status["outputs"]} == {"src/out/app", "src/out/report.txt"}


def test_a_configmap_input_lands_in_the_workspace(tmp_path):
    (tmp_path / "srcs.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "srcs"},
        "data": {"a.txt": "from data"}, "binaryData": {"b.bin": "aGkK"}}))
    path = write_task(tmp_path, command=["sh", "-c", "cat lib/a.txt lib/b.bin"],
                      inputs=[{"path": "lib", "configMap": {"name": "srcs"}}])
    result = cli("run", str(path), *HOST_ONLY, "-o", "json")
    status = json.loads(result.stdout)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["logs"]["stdoutTail"] == "from datahi\n"


def test_crd_command_prints_the_committed_crd():
    result = cli("crd")
    assert result.returncode == 0
    assert result.stdout == (ROOT / "crds" / "executiontask.yaml").read_text()
