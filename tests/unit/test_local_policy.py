"""``expbuild-isolation run`` obeys the worker file's ``[policy]``: the same knobs as an ExecutionPolicy.

Refusals are judged from the host: the executor is never asked to run the task, and the marker its command
would write outside the workspace does not exist; the control runs the same task under a [policy] it
satisfies and the marker appears.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from expbuild_isolation.api.task import ExecutionTask
from expbuild_isolation.executors.config import NamespaceConfig
from expbuild_isolation.executors.host import HostExecutor
from expbuild_isolation.executors.namespace.executor import NamespaceExecutor
from expbuild_isolation.worker.config import ConfigError, parse_worker_config
from expbuild_isolation.worker.local import run_task

from tests.agent.conftest import CountingExecutor

from .manifests import task as task_manifest
from .policy_cases import VIOLATIONS

ROOT = Path(__file__).resolve().parents[2]
ON_THE_HOST = {"isolation": {"minimum": "None", "seccompProfile": "Unconfined", "executor": "host"},
               "network": {"policy": "Full"}}


def snake(value):  # type: ignore[no-untyped-def]
    """An ExecutionPolicy's camelCase spec as the worker file's snake_case keys."""
    if isinstance(value, dict):
        return {re.sub("([A-Z])", r"_\1", key).lower(): snake(item) for key, item in value.items()}
    return value


def config(tmp_path: Path, policy: dict | None):  # type: ignore[no-untyped-def]
    raw = {"work_dir": str(tmp_path / "work"), "executor": {"type": "host"}}
    return parse_worker_config(raw | ({"policy": snake(policy)} if policy is not None else {}))


@pytest.fixture
def marker():  # type: ignore[no-untyped-def]
    path = Path(f"/tmp/expbuild-policy-{uuid.uuid4().hex[:10]}")
    yield path
    path.unlink(missing_ok=True)


@pytest.mark.parametrize("case", list(VIOLATIONS))
def test_run_refuses_what_the_worker_policy_forbids_before_anything_runs(tmp_path, case, marker):
    rules, spec, field, value, accepted = VIOLATIONS[case]
    task = ExecutionTask.model_validate(task_manifest(**(spec | {"command": ["sh", "-c", f"touch {marker}"]})))
    counting = CountingExecutor(HostExecutor())
    status = asyncio.run(run_task(task, [counting], config(tmp_path, rules)))
    assert (status.phase.value, status.reason) == ("Error", "PolicyViolation"), status
    assert field in status.message and value in status.message and accepted in status.message
    assert "not allowed by the worker config's [policy]" in status.message
    assert counting.runs == [] and not marker.exists()


def test_the_same_task_runs_under_a_policy_it_satisfies(tmp_path, marker):
    task = ExecutionTask.model_validate(task_manifest(command=["sh", "-c", f"touch {marker}"], **ON_THE_HOST))
    allows = {"isolation": {"executors": ["host"]}, "network": {"policies": ["Full"]}}
    counting = CountingExecutor(HostExecutor())
    status = asyncio.run(run_task(task, [counting], config(tmp_path, allows)))
    assert status.phase.value == "Succeeded", status
    assert marker.exists() and len(counting.runs) == 1
    marker.unlink()
    refuses = {"isolation": {"executors": ["namespace"]}}
    status = asyncio.run(run_task(task, [counting], config(tmp_path, refuses)))
    assert status.reason == "PolicyViolation" and not marker.exists() and len(counting.runs) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="the namespace executor needs root (namespaces, cgroups)")
def test_a_raised_floor_is_never_lowered_locally(tmp_path):
    task = ExecutionTask.model_validate(task_manifest(command=["true"], isolation={"minimum": "None"}))
    executor = CountingExecutor(NamespaceExecutor(NamespaceConfig()))
    ran = asyncio.run(run_task(task, [executor], config(tmp_path, {"isolation": {"minimum": "Container",
                                                                                 "belowMinimum": "Raise"}})))
    assert ran.phase.value == "Succeeded" and len(executor.runs) == 1, ran  # Container meets the raised floor
    raises = {"isolation": {"minimum": "VM", "belowMinimum": "Raise"}}
    status = asyncio.run(run_task(task, [executor], config(tmp_path, raises)))
    assert (status.phase.value, status.reason) == ("Error", "IsolationUnavailable"), status
    assert "raised to VM" in status.message and len(executor.runs) == 1


def test_a_bad_policy_key_is_one_clear_error():
    with pytest.raises(ConfigError) as caught:
        parse_worker_config({"policy": {"isolation": {"minimum": "Paranoid"}}}, source="worker.toml")
    assert "worker.toml" in str(caught.value) and "policy.isolation.minimum" in str(caught.value)
    with pytest.raises(ConfigError, match="policy.namespace_selector: unknown key"):
        parse_worker_config({"policy": {"namespace_selector": {}}}, source="worker.toml")
    with pytest.raises(ConfigError, match="policy.max_resources.memory"):
        parse_worker_config({"policy": {"max_resources": {"memory": "2GB"}}}, source="worker.toml")


def test_the_cli_exits_125_and_names_the_policy(tmp_path, marker):
    (tmp_path / "worker.toml").write_text(f'work_dir = "{tmp_path / "work"}"\n[executor]\ntype = "host"\n'
                                          '[policy.images]\nallowed = ["registry.local/*"]\n')
    (tmp_path / "task.yaml").write_text(
        "apiVersion: expbuild.io/v1alpha1\nkind: ExecutionTask\nmetadata: {name: t}\nspec:\n"
        f"  image: docker.io/evil/miner:latest\n  command: [sh, -c, 'touch {marker}']\n"
        "  isolation: {minimum: None, seccompProfile: Unconfined, executor: host}\n  network: {policy: Full}\n")
    run = subprocess.run([sys.executable, "-m", "expbuild_isolation.cli", "run", str(tmp_path / "task.yaml"),
                          "--config", str(tmp_path / "worker.toml"), "-o", "json"], capture_output=True, text=True,
                         env=os.environ | {"PYTHONPATH": str(ROOT / "operator")}, timeout=60, check=False)
    assert run.returncode == 125, run.stdout + run.stderr
    assert '"reason": "PolicyViolation"' in run.stdout and "registry.local/*" in run.stdout
    assert "Traceback" not in run.stderr and not marker.exists()
