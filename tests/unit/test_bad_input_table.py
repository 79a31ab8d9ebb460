"""Issue #14's table, row by row, through `expbuild-isolation run` as a user would meet it.

Every row must end in a clear one-line refusal (exit 125) or an Error status naming the field: never a
traceback, a hang, `internal error:`, a host path, or the command running. (The ConfigMap rows are
tested with the ConfigMap reader.)
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HEAD = "apiVersion: expbuild.io/v1alpha1\nkind: ExecutionTask\nmetadata: {name: t}\nspec:\n"
HOST = "  isolation: {minimum: None, seccompProfile: Unconfined}\n  network: {policy: Full}\n"


def spec(**fields) -> str:
    body = {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask", "metadata": {"name": "t"},
            "spec": {"isolation": {"minimum": "None", "seccompProfile": "Unconfined"}, "network": {"policy": "Full"},
                     **fields}}
    return yaml.safe_dump(body)


def touch(marker: Path, *extra: str) -> list[str]:
    return ["sh", "-c", f"touch {marker}", *extra]


ROWS = {
    # name: (manifest text given the marker path, executor, what the message must name)
    "yaml-nested-5000-deep": (lambda m: HEAD + HOST + f"  command: [sh, -c, 'touch {m}']\n  env: "
                              + "[" * 5000 + "]" * 5000 + "\n", "host", "nested deeper than 64 levels"),
    "nul-in-command": (lambda m: spec(command=touch(m, "a\0b")), "host", "spec.command[3]: contains a NUL byte"),
    "nul-in-env": (lambda m: spec(command=touch(m), env=[{"name": "A", "value": "x\0y"}]), "host",
                   "spec.env[0].value: contains a NUL byte"),
    "cpu-1e30": (lambda m: spec(command=touch(m), resources={"cpu": "1e30"}), "namespace",
                 "spec.resources.cpu: '1e30' is out of range"),
    "memory-999999Ei": (lambda m: spec(command=touch(m), resources={"memory": "999999Ei"}), "namespace",
                        "spec.resources.memory: '999999Ei' is out of range"),
    "disk-1Ei": (lambda m: spec(command=touch(m), resources={"disk": "1Ei"}), "namespace",
                 "spec.resources.disk: '1Ei' is out of range"),
    "timeout-huge": (lambda m: spec(command=touch(m), timeout="99999999999d"), "host",
                     "spec.timeout: '99999999999d' is out of range"),
    "input-path-empty": (lambda m: spec(command=touch(m), inputs=[{"path": "", "content": "x"}]), "host",
                         "a content input needs a file name"),
    "input-path-dot": (lambda m: spec(command=touch(m), inputs=[{"path": ".", "content": "x"}]), "host",
                       "a content input needs a file name"),
    "duplicate-keys": (lambda m: HEAD + HOST + f"  command: [sh, -c, 'touch {m}']\n  command: [sh, -c, 'touch {m}']\n",
                       "host", "the key 'command' appears twice"),
    "oversize-value": (lambda m: spec(command=touch(m, "x" * 300_000)), "host", "(300000 characters)"),
}


@pytest.mark.parametrize("row", sorted(ROWS))
def test_each_row_is_a_clear_refusal_and_the_command_never_runs(tmp_path, row):
    text, executor, fragment = ROWS[row]
    marker = tmp_path / "ran"
    path = tmp_path / "task.yaml"
    path.write_text(text(marker))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "expbuild_isolation.cli", "run", str(path), "--executor", executor,
                             "-o", "json"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert time.monotonic() - started < 60
    output = result.stderr + result.stdout
    assert result.returncode == 125, output[:1000]
    assert "internal error" not in output and "Traceback" not in output, output[:1000]
    if result.stdout.strip():   # refused while running: the status says why
        message = json.loads(result.stdout)["status"]["message"]
        assert json.loads(result.stdout)["status"]["phase"] == "Error"
    else:                       # refused before running: one line on stderr
        assert result.stderr.count("\n") == 1
        message = result.stderr
    assert fragment in message and len(message) < 600, message[:600]
    assert "/tmp/expbuild-worker" not in message
    assert not marker.exists(), "the command ran"
