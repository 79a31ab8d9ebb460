"""What the cgroup v2 guest runs (``test_guest.py``), and why each part exercises v2 code.

Software emulation makes every test 10-50x slower, so the guest runs the tests that reach the executors'
cgroup code, not the whole suite. ``tests/isolation/matrix.py`` reads these lists to say in
docs/capabilities.md which hierarchy each row was proven on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ESCAPES = "tests/isolation/test_escapes.py"

NAMESPACE_V2 = [
    "tests/cgroupv2/test_v2_limits.py",      # limits written before exec, read back from the kernel; memory.events
    "tests/cgroupv2/test_v2_cgroup_namespace.py",   # a worker in a pod's cgroup namespace (nsdelegate)
    "tests/executors/test_namespace.py",     # create/limit/kill/stats/remove, the sweep, spares, 100 tasks
]
V1_ONLY = ["tests/executors/test_namespace.py::test_cgroup_v1_create_limit_kill_stats_remove"]
ESCAPE_BACKENDS = ("namespace",)             # every attack of tests/isolation/test_escapes.py on these
# The per-task parent cgroup's v2 stats (cpu.stat, memory.peak, memory.events) and its removal (every
# Docker test's fixture checks that no parent cgroup is left). Not the timeout test: it bounds the kill at
# 10 s, which runc and dockerd under emulation need most of, on a loaded machine more.
DOCKER_V2 = [
    "tests/executors/test_docker.py::test_hello_runs_as_nobody_in_the_workspace",
    "tests/executors/test_docker.py::test_memory_past_the_limit_ends_in_oom_killed",
]


def escape_tests() -> list[str]:
    """Every escape test on ESCAPE_BACKENDS as pytest collects them here: a new attack, or one with further
    parameters (``[namespace-clone3]``), is included."""
    listed = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
                             ESCAPES], cwd=ROOT, capture_output=True, text=True, check=False)
    tests = [line for line in listed.stdout.splitlines() if line.startswith(f"{ESCAPES}::")]
    if listed.returncode != 0 or not tests:
        raise RuntimeError(f"cannot collect {ESCAPES}: {listed.stdout[-2000:]}{listed.stderr[-2000:]}")
    return [test for test in tests if set(test.rsplit("[", 1)[-1].rstrip("]").split("-")) & set(ESCAPE_BACKENDS)]


def pytest_args() -> list[str]:
    return ["-q", "-rfEs", *NAMESPACE_V2, *escape_tests(), *DOCKER_V2, *(f"--deselect={test}" for test in V1_ONLY)]
