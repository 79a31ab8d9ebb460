"""Fuzz `expbuild-isolation run --executor host` with generated manifests (issue #14).

Whatever the manifest (valid, broken, or built to hurt the parser), `run` must end in bounded time
with either a status or one line on stderr: never a traceback, never `internal error:`, and never a
read outside the task's directory. The last is judged by a canary: a secret in files beside (not in)
the task's directory, which must never appear in anything `run` prints. Every command that can run is
the probe below, which prints every file in its workspace, so a file smuggled in from outside would show.

The example count is small for CI; tests/bench/fuzz_long.py runs the same properties longer
(EXPBUILD_FUZZ_EXAMPLES).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from expbuild_isolation.api.task import Phase
from expbuild_isolation.cli import main

from .strategies import any_spec, as_yaml, hostile_texts, manifest

EXAMPLES = int(os.environ.get("EXPBUILD_FUZZ_EXAMPLES", "60"))
SECRET = "expbuild-canary-7d1f9c2e5b"
PROBE = ["sh", "-c", "find . -type f -exec cat {} + 2>/dev/null; exit 0", "probe"]
FUZZ = settings(max_examples=EXAMPLES, deadline=30_000, derandomize=os.environ.get("CI") == "true",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    """tmp/task/ holds the task and a real ConfigMap; tmp/ (outside it) holds the canaries."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "task").mkdir()
    (root / "task" / "cm.yaml").write_text(as_yaml({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"},
                                                    "data": {"a.txt": "from the task's own ConfigMap"}}))
    (root / "canary.yaml").write_text(as_yaml({"apiVersion": "v1", "kind": "ConfigMap",
                                               "metadata": {"name": "canary"}, "data": {"secret": SECRET}}))
    (root / "secret.txt").write_text(SECRET)
    (root / "worker.toml").write_text(f"work_dir = '{root / 'work'}'\n")
    return root


def runnable(spec):
    """Whatever the model accepts runs only the probe: a command list keeps its strings as the probe's args."""
    if isinstance(spec, dict) and isinstance(spec.get("command"), list):
        spec = {**spec, "command": PROBE + [c for c in spec["command"] if isinstance(c, str)][:8]}
    return spec


def on_host(spec):
    """Half the examples are made runnable by the host executor, so the run path is exercised, not only refusals."""
    if isinstance(spec, dict):
        spec = {**spec, "isolation": {"minimum": "None", "seccompProfile": "Unconfined", "executor": "host"},
                "network": {"policy": "Full"}}
        spec.pop("resources", None)
    return spec


config_map_names = st.sampled_from(["cm", "missing", "CM", "cm.yaml", "-", "a" * 300])


def with_config_map(spec, name):
    if isinstance(spec, dict) and isinstance(spec.get("inputs"), list):
        spec = {**spec, "inputs": spec["inputs"] + [{"path": "maps", "configMap": {"name": name}}]}
    return spec


def run_cli(place: Path, text: str) -> tuple[int, str, str]:
    path = place / "task" / "task.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", str(path), "--executor", "host", "--config", str(place / "worker.toml"), "-o", "json"])
    return code, out.getvalue(), err.getvalue()


def check(code: int, out: str, err: str) -> None:
    assert "Traceback" not in err and "internal error" not in err, err[:2000]
    assert SECRET not in out and SECRET not in err, "a file outside the task's directory was read"
    assert err.count("\n") <= 1 and len(err) < 4000, err[:2000]
    if out.strip():
        status = json.loads(out)["status"]
        assert Phase(status["phase"]), status
        assert "internal error" not in status.get("message", "")
        assert code == (0 if status["phase"] == "Succeeded" else code)
    else:
        assert code == 125 and err, (code, err)


@FUZZ
@given(spec=any_spec, host=st.booleans(), config_map=st.none() | config_map_names)
def test_run_survives_generated_manifests(place, spec, host, config_map):
    spec = runnable(on_host(spec) if host else spec)
    if config_map is not None:
        spec = with_config_map(spec, config_map)
    check(*run_cli(place, as_yaml(manifest(spec))))


@FUZZ
@given(text=hostile_texts)
def test_run_survives_texts_built_to_hurt_the_parser(place, text):
    check(*run_cli(place, text))


TRAVERSING = ["../canary", "../../canary", "..", "/etc/hostname", "./../canary", "sub/../../canary"]


@FUZZ
@given(name=st.sampled_from(TRAVERSING), host=st.just(True))
def test_a_config_map_name_never_reaches_outside_the_task_directory(place, name, host):
    spec = runnable(on_host({"command": ["true"], "inputs": [{"path": "maps", "configMap": {"name": name}}]}))
    check(*run_cli(place, as_yaml(manifest(spec))))


def test_the_probe_prints_what_reached_the_workspace(place):
    """Positive control for the canary: content that does reach the workspace (the task's own ConfigMap) shows."""
    spec = runnable(on_host({"command": ["true"], "inputs": [{"path": "maps", "configMap": {"name": "cm"}}]}))
    code, out, err = run_cli(place, as_yaml(manifest(spec)))
    assert code == 0, err
    assert "from the task's own ConfigMap" in json.loads(out)["status"]["logs"]["stdoutTail"]
