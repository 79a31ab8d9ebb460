"""`expbuild-isolation selftest` on this machine agrees with docs/capabilities.md and leaves nothing behind.

It runs as a user would run it (the command line, a fresh process, the default worker configuration: every
backend), against the real backends. Its TMPDIR and HOME are directories of this test, so whatever an
attack made in /tmp or in $HOME (secrets, targets, workspaces) must be gone at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from expbuild_isolation.selftest.catalog import ATTACKS

from .conftest import BACKENDS, required_backends

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "capabilities.md"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the namespace backend and the suite's bait need root")


def documented_cells() -> dict[str, dict[str, str]]:
    """docs/capabilities.md's attack table: attack key -> backend -> cell."""
    lines = DOC.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| Attack |"))
    names = [cell.strip() for cell in header.strip("|").split("|")][1:]
    cells: dict[str, dict[str, str]] = {}
    for line in lines:
        row = re.match(r"\| .* \(`(\w+)`\) \| (.*) \|$", line)
        if row:
            values = [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", row.group(2))]
            cells[row.group(1)] = dict(zip(names, values))
    return cells


@pytest.fixture(scope="module")
def selftest_run():
    """One run for the module's tests: it attacks four backends (about a minute)."""
    scratch = Path(tempfile.mkdtemp(prefix="expbuild-selftest-tmp-"))
    home = Path(tempfile.mkdtemp(prefix="expbuild-selftest-home-"))
    scratch.chmod(0o755)   # the host backend's nobody must reach its workspace and the shared bait
    try:
        done = subprocess.run([sys.executable, "-m", "expbuild_isolation.cli", "selftest", "-o", "json"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "TMPDIR": str(scratch), "HOME": str(home)})
        yield done, sorted(p.name for p in scratch.iterdir()), sorted(p.name for p in home.iterdir())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def available(report: dict) -> list[dict]:
    backends = {b["name"]: b for b in report["backends"]}
    assert sorted(backends) == sorted(BACKENDS), "the default worker file configures every backend"
    missing = {name: b["reason"] for name, b in backends.items() if not b["available"]}
    assert not {name for name in missing if name in required_backends()}, missing
    return [b for b in report["backends"] if b["available"]]


def test_selftest_prints_the_documented_matrix_for_every_backend_here(selftest_run):
    done, _, _ = selftest_run
    assert done.stderr == "", done.stderr
    report = json.loads(done.stdout)
    documented = documented_cells()
    for backend in available(report):
        for attack in ATTACKS:
            got = backend["attacks"][attack.key]
            assert got["cell"] == documented[attack.key][backend["name"]], (backend["name"], attack.key, got)
    assert (done.returncode, report["exitStatus"], report["failures"], report["notChecked"]) == (0, 0, [], [])


def test_selftest_reports_the_isolation_level_each_backend_reached(selftest_run):
    report = json.loads(selftest_run[0].stdout)
    levels = {b["name"]: b["isolationLevel"] for b in available(report)}
    expected = {"host": "Process", "namespace": "Container", "docker": "Container", "podman": "Container"}
    assert levels == {name: {"claimed": expected[name], "reached": expected[name]} for name in levels}


def test_selftest_leaves_nothing_in_tmp_or_home(selftest_run):
    _, in_tmp, in_home = selftest_run
    assert (in_tmp, in_home) == ([], [])
    assert not list(Path("/etc").glob("expbuild-escape-*")) and not list(Path("/usr/bin").glob("expbuild-escape-*"))
