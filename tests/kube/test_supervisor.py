"""The supervisor script, executed for real under the static busybox the pods get."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from expbuild_isolation.kube import supervisor
from expbuild_isolation.kube.results import parse_termination_message

BUSYBOX = shutil.which("busybox") and "/bin/busybox"
pytestmark = pytest.mark.skipif(not BUSYBOX or not os.path.exists("/bin/busybox"),
                                reason="needs a static busybox at /bin/busybox (Debian: busybox-static)")


def fake_cgroup_v2(root: Path) -> Path:
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    (root / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    (root / "memory.peak").write_text("31457280\n")
    return root


def fake_cgroup_v1(root: Path) -> Path:
    (root / "memory").mkdir(parents=True)
    (root / "cpu,cpuacct").mkdir()
    (root / "cpu,cpuacct" / "cpuacct.usage").write_text("2500000000\n")
    (root / "memory" / "memory.max_usage_in_bytes").write_text("1048576\n")
    return root


def run(tmp_path: Path, argv: list[str], outputs: list[str], cgroup: Path, **kw) -> tuple[int, str, dict]:
    workspace = tmp_path / "workspace"
    workspace.mkdir(exist_ok=True)
    termlog = tmp_path / "termination-log"
    command = supervisor.supervised_command(argv, outputs, busybox="/bin/busybox", termination_log=str(termlog),
                                            cgroup_root=str(cgroup), workspace=str(workspace))
    proc = subprocess.run(command, cwd=workspace, capture_output=True, text=True, timeout=30, **kw)
    return proc.returncode, proc.stdout + proc.stderr, json.loads(termlog.read_text())


def test_the_exit_code_outputs_and_cgroup_v2_counters_are_reported(tmp_path):
    script = "mkdir -p out && printf hello > out/app && chmod +x out/app && echo to-stdout && exit 3"
    code, logs, report = run(tmp_path, ["sh", "-c", script], ["out/app", "out/missing"], fake_cgroup_v2(tmp_path / "cg"))
    assert code == 3 and "to-stdout" in logs
    assert report == {"v": 1, "exit": 3, "cg": 2, "cpu_us": 1500000, "mem": 31457280, "trunc": 0,
                      "out": [[0, hashlib.sha256(b"hello").hexdigest(), 5, 1], [1, None, 0, 0]]}
    parsed = parse_termination_message(json.dumps(report), ["out/app", "out/missing"])
    assert parsed.cpu_time_seconds == 1.5 and parsed.peak_memory_bytes == 31457280
    assert parsed.outputs == [{"path": "out/app", "sha256": hashlib.sha256(b"hello").hexdigest(), "sizeBytes": 5,
                               "executable": True}]
    assert parsed.missing_outputs == ["out/missing"]


def test_cgroup_v1_counters_are_read_too(tmp_path):
    code, _, report = run(tmp_path, ["true"], [], fake_cgroup_v1(tmp_path / "cg"))
    assert code == 0 and report["cg"] == 1 and report["cpu_ns"] == 2500000000 and report["mem"] == 1048576
    assert parse_termination_message(json.dumps(report), []).cpu_time_seconds == 2.5


def test_argv_is_passed_verbatim_never_through_a_shell(tmp_path):
    marker = tmp_path / "pwned"
    code, logs, _ = run(tmp_path, ["printf", "%s|", "$(touch %s)" % marker, "a b", "*", "'"], [], tmp_path / "none")
    assert code == 0 and not marker.exists()
    assert f"$(touch {marker})|a b|*|'|" in logs


def test_a_missing_program_exits_127_and_still_reports(tmp_path):
    code, logs, report = run(tmp_path, ["no-such-program-xyz"], [], tmp_path / "none")
    assert code == 127 and "no-such-program-xyz: command not found" in logs
    assert report["exit"] == 127 and report["cg"] == 0 and report["cpu_us"] is None


def test_a_signal_keeps_128_plus_n(tmp_path):
    code, _, report = run(tmp_path, ["sh", "-c", "kill -KILL $$"], [], tmp_path / "none")
    assert code == 137 and report["exit"] == 137


def test_many_outputs_stay_under_4_kib_and_are_marked_truncated(tmp_path):
    paths = [f"out/file-{i:03d}" for i in range(120)]
    script = "mkdir -p out && for i in $(seq -w 0 119); do echo $i > out/file-$i; done"
    _, _, report = run(tmp_path, ["sh", "-c", script], paths, tmp_path / "none")
    text = (tmp_path / "termination-log").read_text()
    assert len(text.encode()) < 4096 and report["trunc"] == 1 and 10 < len(report["out"]) < 120
    parsed = parse_termination_message(text, paths)
    assert parsed.truncated and parsed.outputs[0]["path"] == "out/file-000"


def test_the_prepare_script_places_inputs_and_installs_the_busybox(tmp_path):
    inline = tmp_path / "inline"
    inline.mkdir()
    (inline / "input-0").write_text("#!/bin/sh\necho hi\n")
    cm = tmp_path / "cm"
    cm.mkdir()
    (cm / "a.txt").write_text("A")
    (cm / "b.txt").write_text("B")
    workspace, tools = tmp_path / "ws", tmp_path / "tools"
    workspace.mkdir()
    command = supervisor.prepare_command("/bin/busybox", [["file", str(inline / "input-0"), "bin/run.sh", "0755"],
                                                          ["dir", str(cm), "src/lib"]],
                                         working_dir="src/build", workspace=str(workspace))
    command[command.index("expbuild-prepare") + 2] = str(tools)
    subprocess.run(command, check=True, timeout=30)
    assert os.access(workspace / "bin/run.sh", os.X_OK)
    assert (workspace / "src/lib/a.txt").read_text() == "A" and (workspace / "src/lib/b.txt").read_text() == "B"
    assert (workspace / "src/build").is_dir() and os.access(tools / "bin/busybox", os.X_OK)
