"""`expbuild-isolation run` prints the status and exits with the task's own code; errors are one line."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from expbuild_isolation.api.task import IsolationLevel
from expbuild_isolation.cli import main
from expbuild_isolation.executors.host import HostExecutor
from expbuild_isolation.selftest.catalog import ATTACKS

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


# -- selftest ------------------------------------------------------------------------------------------------
# The whole matrix against every backend is tests/isolation/test_selftest.py; these pin the command's contract.

def table_cell(stdout: str, key: str) -> str:
    return next(line for line in stdout.splitlines() if f"(`{key}`)" in line).removesuffix(" |").split(" | ")[1]


def test_selftest_help_says_what_each_attack_needs():
    result = cli("selftest", "--help")
    text = " ".join(result.stdout.split())
    assert result.returncode == 0
    for attack in ATTACKS:
        assert f"{attack.key} {attack.sentence}; needs {attack.needs}" in text
    assert "exit status: 0 every claim held; 1 a backend lost an attack" in text


def test_selftest_reports_what_a_backend_does_not_claim_as_an_expected_loss():
    result = cli("selftest", "--executor", "host", "--attack", "secret_read", "--attack", "daemon")
    assert result.returncode == 0, result.stdout + result.stderr
    assert table_cell(result.stdout, "secret_read").startswith("✘ isolation Process, below Filesystem")
    assert table_cell(result.stdout, "daemon") == "✔"
    assert "| isolation level reached | Process |" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("OK: 1 held, 1 expected losses")


def test_selftest_exits_1_when_a_real_backend_loses_an_attack_it_claims(monkeypatch, capsys):
    """The real host executor with a fake claim (Filesystem isolation, which it does not have): the same
    losses the test above reports as expected are failures now, and so is the level its tasks reported."""
    real = HostExecutor.capabilities
    monkeypatch.setattr(HostExecutor, "capabilities",
                        lambda self: dataclasses.replace(real(self), isolation_level=IsolationLevel.FILESYSTEM))
    code = main(["selftest", "--executor", "host", "--attack", "secret_read", "--attack", "write_outside",
                 "--attack", "daemon", "-o", "json"])
    report = json.loads(capsys.readouterr().out)
    assert code == report["exitStatus"] == 1
    verdicts = report["backends"][0]["attacks"]
    assert {key: v["outcome"] for key, v in verdicts.items()} == {
        "secret_read": "lost", "write_outside": "lost", "daemon": "held"}
    assert "the secret's bytes came out" in verdicts["secret_read"]["cell"]
    assert "the task wrote /tmp/expbuild-escape-" in verdicts["write_outside"]["detail"]
    assert report["failures"][-1] == "host claims isolation Filesystem but its tasks reported Process"


@pytest.mark.skipif(os.geteuid() != 0, reason="the namespace executor needs root")
def test_selftest_follows_a_weakened_configuration_and_the_level_it_really_gets(tmp_path):
    config = tmp_path / "worker.toml"
    config.write_text('[executor]\ntype = "namespace"\n[executor.namespace]\nuse_pid_namespace = false\n')
    result = cli("selftest", "--config", str(config), "--attack", "host_processes", "--attack", "secret_read",
                 "-o", "json")
    report = json.loads(result.stdout)
    assert result.returncode == 0, report
    [namespace] = report["backends"]
    assert namespace["isolationLevel"] == {"claimed": "Filesystem", "reached": "Filesystem"}
    assert namespace["attacks"]["host_processes"]["cell"] == \
        "✘ isolation Filesystem, below Container: it shares the host's PID namespace"
    assert "saw host process" in namespace["attacks"]["host_processes"]["evidence"]
    assert namespace["attacks"]["secret_read"]["outcome"] == "held"


def test_selftest_names_an_unavailable_backend_and_fails_only_when_it_was_asked_for(tmp_path):
    config = tmp_path / "worker.toml"
    config.write_text('[executor]\nchain = ["docker", "host"]\n[executor.docker]\n'
                      'socket_path = "/nonexistent/docker.sock"\n')
    configured = cli("selftest", "--config", str(config), "--attack", "daemon")
    assert configured.returncode == 0, configured.stdout
    assert "| isolation level reached | Process | – unavailable: docker: no socket at /nonexistent/docker.sock" \
        in configured.stdout
    named = cli("selftest", "--config", str(config), "--attack", "daemon", "--executor", "docker")
    assert named.returncode == 3
    assert "NOT CHECKED: docker is unavailable: docker: no socket at /nonexistent/docker.sock" in named.stdout


def test_selftest_bad_input_is_one_line(tmp_path):
    config = tmp_path / "worker.toml"
    config.write_text("[executor.docker]\nbogus = 1\n")
    result = cli("selftest", "--config", str(config))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "executor.docker.bogus: unknown key" in result.stderr and "Traceback" not in result.stderr
    result = cli("selftest", "--attack", "escape_everything")
    assert result.returncode == 2 and "invalid choice: 'escape_everything'" in result.stderr
