"""Bazel -> BuildGrid -> our REAPI worker -> the namespace executor, for real.

Skipped with the reason when BuildGrid, PostgreSQL or Bazel are not installed
(``bash .ci/setup-reapi.sh`` installs them); with EXPBUILD_REQUIRE_REAPI=1 a
missing piece fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from expbuild_isolation.selftest.host_side import processes_with

from .stack import ReapiStack, free_port, require_tools

HERE = Path(__file__).parent
pytestmark = [pytest.mark.root, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_tools()
    root = tmp_path_factory.mktemp("reapi")
    with ReapiStack(root, capacity=2) as stack:
        stack.metrics_port = free_port()
        stack.start_worker("namespace", metrics_port=stack.metrics_port)
        workspace = root / "ws"
        shutil.copytree(HERE / "workspace", workspace)
        stack.workspace = workspace
        yield stack


def audit_lines(stack: ReapiStack, index: int = -1) -> list[dict]:
    lines = [line.split("expbuild.audit INFO ", 1)[1] for line in stack.worker_log(index).splitlines()
             if "expbuild.audit INFO " in line]
    return [json.loads(line) for line in lines]


def test_a_bazel_build_runs_every_action_remotely_through_the_worker(stack):
    result = stack.bazel(stack.workspace, "build", "//:hello", "//:tree", "//:consume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 remote" in result.stderr, result.stderr[-2000:]
    bin_dir = stack.workspace / "bazel-bin"
    assert (bin_dir / "hello.txt").read_text() == "hello from 65534\n"      # ran as nobody, not root
    assert (bin_dir / "tree" / "sub" / "b.txt").read_text() == "b\n"       # a directory output, as a Tree
    assert os.access(bin_dir / "tree" / "run.sh", os.X_OK)
    consumed = (bin_dir / "consume.txt").read_text().split()
    assert consumed[0] == "5000000"                                           # multi-MB output consumed remotely
    assert {"a.txt", "run.sh", "sub", "b.txt"} <= set(consumed)
    ends = [line for line in audit_lines(stack) if line["event"] == "end"]
    assert len(ends) == 4 and {line["executor"] for line in ends} == {"namespace"}
    assert {line["isolation"] for line in ends} == {"Container"}
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5).read().decode()
    assert 'expbuild_reapi_actions_total{executor="namespace",outcome="success"} 4.0' in metrics
    assert "expbuild_reapi_execution_seconds_bucket" in metrics
    in_bytes = [line for line in metrics.splitlines() if line.startswith('expbuild_reapi_cas_bytes_total{direction="out"}')]
    assert in_bytes and float(in_bytes[0].split()[-1]) >= 5_000_000


def test_a_failing_action_shows_its_exit_code_and_stderr_in_bazel(stack):
    result = stack.bazel(stack.workspace, "build", "//:fail")
    assert result.returncode != 0
    assert "(Exit 3)" in result.stderr, result.stderr[-2000:]
    assert "this-action-failed-on-purpose" in result.stderr


def test_a_second_build_is_served_from_the_action_cache(stack):
    before = len(audit_lines(stack))
    assert stack.bazel(stack.workspace, "clean").returncode == 0
    result = stack.bazel(stack.workspace, "build", "//:hello", "//:tree", "//:consume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 remote cache hit" in result.stderr, result.stderr[-2000:]
    assert len(audit_lines(stack)) == before                                   # the worker ran nothing


def test_a_hostile_action_is_contained(stack):
    for leftover in (Path("/etc/expbuild-reapi-pwned"), Path("/tmp/expbuild-reapi-escape")):
        leftover.unlink(missing_ok=True)
    result = stack.bazel(stack.workspace, "build", "//:hostile")
    assert result.returncode == 0, result.stderr[-2000:]
    report = (stack.workspace / "bazel-bin" / "hostile.txt").read_text().split()
    assert report[0] == "etc-denied"
    assert report[2] == "net-denied"
    assert report[3] == "own-pid-ns"
    assert report[4] == "65534"
    assert not Path("/etc/expbuild-reapi-pwned").exists()
    assert not Path("/tmp/expbuild-reapi-escape").exists()                   # its /tmp was a private tmpfs


def test_killing_the_worker_mid_action_leaves_nothing_and_the_next_worker_completes_it(stack):
    import subprocess
    marker = "6.4242"
    argv = ["bazel", f"--output_user_root={stack.bazel_root}", "--host_jvm_args=-Xmx1g", "build", "--jobs=2",
            f"--remote_executor={stack.url}", "--spawn_strategy=remote", "--genrule_strategy=remote",
            "--remote_timeout=120", "//:slow"]
    build = subprocess.Popen(argv, cwd=stack.workspace, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "HOME": str(stack.root), "USER": "root"})
    try:
        deadline = time.monotonic() + 60
        while not processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_with(marker), "the slow action never started"
        worker = stack.workers[-1]
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        deadline = time.monotonic() + 10
        while processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_with(marker) == [], "the killed worker's action is still running"
        started = time.monotonic()
        stack.start_worker("namespace")                                         # same bot id: re-registers
        output, _ = build.communicate(timeout=120)
    finally:
        if build.poll() is None:
            build.kill()
    assert build.returncode == 0, output[-3000:]
    assert (stack.workspace / "bazel-bin" / "slow.txt").read_text() == "finished\n"
    assert time.monotonic() - started < stack.keepalive + 30
    ends = [line for line in audit_lines(stack) if line["event"] == "end"]
    assert [line["outcome"]["result"] for line in ends] == ["success"]
