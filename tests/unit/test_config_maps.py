"""ConfigMap inputs on one machine: only <name>.yaml beside the task, read safely; bad ones are clear errors.

Each case is a file a user (or an attacker who controls a task file) can write. None may read a file
outside the task's directory, quote a file's content in an error, or end in a traceback or internal error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from expbuild_isolation.worker.config_maps import ConfigMapError, blobs_of, read_beside

ROOT = Path(__file__).resolve().parents[2]
SECRET = "ROOT-ONLY-SECRET-7731"


@pytest.fixture
def secret(tmp_path_factory):
    """A root-only 0600 file elsewhere on the machine, shaped like a ConfigMap, holding SECRET."""
    where = tmp_path_factory.mktemp("elsewhere") / "cm.yaml"
    where.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "data": {"token": SECRET}}))
    where.chmod(0o600)
    return where


def run(task_dir: Path, name: str, *, input_path: str = "lib") -> dict:
    task = {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask", "metadata": {"name": "t"},
            "spec": {"command": ["sh", "-c", "cat lib/* 2>/dev/null; true"], "network": {"policy": "Full"},
                     "isolation": {"minimum": "None", "seccompProfile": "Unconfined"},
                     "inputs": [{"path": input_path, "configMap": {"name": name}}]}}
    (task_dir / "task.yaml").write_text(yaml.safe_dump(task))
    result = subprocess.run([sys.executable, "-m", "expbuild_isolation.cli", "run", str(task_dir / "task.yaml"),
                             "--executor", "host", "-o", "json"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert "Traceback" not in result.stderr + result.stdout and "internal error" not in result.stderr
    assert SECRET not in result.stdout + result.stderr
    if result.stdout.startswith("{"):
        return {"code": result.returncode, **json.loads(result.stdout)["status"]}
    return {"code": result.returncode, "phase": "Refused", "message": result.stderr}


def test_a_name_with_a_path_never_reaches_a_file_outside_the_task_directory(tmp_path, secret):
    name = os.path.relpath(secret.with_suffix(""), tmp_path)  # ../../elsewhere0/cm
    status = run(tmp_path, name)
    assert status["code"] == 125 and "not a Kubernetes object name" in status["message"]


def test_a_symlink_beside_the_task_is_not_followed(tmp_path, secret):
    (tmp_path / "cm.yaml").symlink_to(secret)
    status = run(tmp_path, "cm")
    assert (status["code"], status["phase"]) == (125, "Error")
    assert "symbolic link" in status["message"] and str(secret) not in status["message"]


@pytest.mark.parametrize("content, words", [
    ("kind: ConfigMap\ndata: {a: [" + SECRET, "not valid YAML"),                   # malformed: no snippet
    (yaml.safe_dump({"kind": "Secret", "data": {"a": SECRET}}), "not a ConfigMap"),
    ("kind: ConfigMap\nbinaryData: {b.bin: '%%%not base64'}\n", "is not base64"),
    ("kind: ConfigMap\ndata: {7: x}\n", "is not a file name"),
    ("kind: ConfigMap\ndata: {a: 7}\n", "is not a string"),
    ("kind: ConfigMap\ndata: {'../x': y}\n", "is not a file name"),
    ("kind: ConfigMap\ndata: [a, b]\n", "is not a map"),
    ("".join(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9 if i else ["x"] * 9) + "]\n" for i in range(9))
     + "kind: ConfigMap\n", "alias"),                                                    # a billion laughs
    ("x: &x y\nkind: ConfigMap\ndata: {a: *x}\n", "alias"),
])
def test_a_bad_configmap_file_is_a_clear_one_line_error(tmp_path, content, words):
    (tmp_path / "cm.yaml").write_text(content)
    status = run(tmp_path, "cm")
    assert (status["code"], status["phase"], status["reason"]) == (125, "Error", "InvalidTask")
    assert words in status["message"] and "spec.inputs['lib'].configMap" in status["message"]


def test_a_directory_or_a_missing_file_in_place_of_the_configmap(tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    assert "is not a regular file" in run(tmp_path, "dir")["message"]
    assert "no ConfigMap file" in run(tmp_path, "absent")["message"]


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path):
    with open(tmp_path / "big.yaml", "w") as handle:
        handle.write("kind: ConfigMap\ndata:\n  a: '")
        handle.write("x" * (3 << 20) + "'\n")
    status = run(tmp_path, "big")
    assert status["reason"] == "InvalidTask" and "at most" in status["message"]


def test_keys_land_under_the_input_path_and_binary_data_is_decoded(tmp_path):
    (tmp_path / "cm.yaml").write_text(yaml.safe_dump({"kind": "ConfigMap", "data": {"a.txt": "A"},
                                                      "binaryData": {"b": "Qg=="}}))
    blobs = blobs_of(read_beside(tmp_path)("cm"), "cm", "lib")
    assert [(b.path, b.content) for b in blobs] == [("lib/a.txt", b"A"), ("lib/b", b"B")]
    assert [b.path for b in blobs_of({"data": {"x": "1"}}, "cm", ".")] == ["x"]
    with pytest.raises(ConfigMapError, match="in both data and binaryData"):
        blobs_of({"data": {"x": "1"}, "binaryData": {"x": "MQ=="}}, "cm", ".")
