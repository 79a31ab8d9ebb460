from __future__ import annotations

import json

import pytest

from expbuild_isolation.kube.results import parse_termination_message

SHA = "a" * 64


def test_a_full_report_is_parsed():
    message = json.dumps({"v": 1, "exit": 0, "cg": 2, "cpu_us": 250000, "mem": 1024, "trunc": 0,
                          "out": [[0, SHA, 12, 0], [1, None, 0, 0]]})
    report = parse_termination_message(message, ["a", "b"])
    assert report.exit_code == 0 and report.cgroup_version == 2
    assert report.stats() == {"cpuTimeSeconds": 0.25, "peakMemoryBytes": 1024}
    assert report.outputs == [{"path": "a", "sha256": SHA, "sizeBytes": 12, "executable": False}]
    assert report.missing_outputs == ["b"] and not report.truncated


@pytest.mark.parametrize("message", ["", None, "Error: something", "{}", "[1]", '{"v": 2}', "{not json"])
def test_anything_else_is_ignored(message):
    assert parse_termination_message(message, ["a"]) is None


def test_malformed_entries_are_skipped_not_fatal():
    message = json.dumps({"v": 1, "exit": "x", "cpu_us": -5, "mem": "big",
                          "out": [[9, SHA, 1, 0], "junk", [0, SHA, 1, 1], [0, SHA, 2, 0], [1, "short", 1, 0]]})
    report = parse_termination_message(message, ["a", "b"])
    assert report.exit_code is None and report.stats() is None
    assert report.outputs == [{"path": "a", "sha256": SHA, "sizeBytes": 1, "executable": True}]
    assert report.missing_outputs == ["b"]
