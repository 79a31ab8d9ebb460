"""The cgroup v2 suite, run inside a cgroup-v2-only guest kernel (guest.py) by the ordinary test command.

This machine runs cgroup v1, so without the guest the executors' v2 code would never run. The guest runs,
under software emulation, the tests that exercise v2 code (``suite.py``, about 5 minutes here); any failure
inside fails this test, with the guest's pytest output in the message. It skips only when QEMU or the
unpacked guest kernel is missing (``bash .ci/setup-guest.sh`` provides both) -- and fails instead when
EXPBUILD_REQUIRE_CGROUP_V2=1, as .ci/run sets it.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import pytest

from . import guest, suite


def required() -> bool:
    return os.environ.get("EXPBUILD_REQUIRE_CGROUP_V2") == "1"


def outcomes(junit: str) -> dict[str, str]:
    """test id -> passed / failure / error / skipped, from pytest's JUnit XML (empty when there is none)."""
    if not junit.strip():
        return {}
    found = {}
    for case in ET.fromstring(junit).iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        found[f"{case.get('classname')}::{case.get('name')}"] = kinds[0] if kinds else "passed"
    return found


@pytest.mark.timeout(1500)
def test_the_v2_suite_passes_in_a_cgroup_v2_guest():
    if os.environ.get("EXPBUILD_IN_CGROUP_V2_GUEST") == "1":
        pytest.skip("already inside the cgroup v2 guest")
    try:
        guest.check_ready()
    except guest.GuestUnavailable as exc:
        if required():
            pytest.fail(f"EXPBUILD_REQUIRE_CGROUP_V2=1 but the cgroup v2 guest cannot boot: {exc}")
        pytest.skip(f"the cgroup v2 guest cannot boot here: {exc}")
    run = guest.run(suite.pytest_args(), docker=True, timeout=1200)
    print(run.report().split("\n", 1)[0])   # exit code, wall time and guest uptimes (pytest -rP shows it)
    assert run.exit_code == 0, run.report()
    results = outcomes(run.junit)
    not_passed = {test: outcome for test, outcome in results.items() if outcome != "passed"}
    assert not not_passed, f"in the guest, every selected test must pass (none skipped): {not_passed}\n{run.report()}"
    assert len(results) >= 30, f"the guest ran only {len(results)} tests\n{run.report()}"


def test_modules_load_dependencies_first(tmp_path):
    (tmp_path / "modules.dep").write_text("kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n"
                                          "kernel/net/9p/9pnet.ko:\nkernel/fs/netfs/netfs.ko:\n"
                                          "kernel/fs/overlayfs/overlay.ko:\n")
    order = [p.name for p in guest.load_order(tmp_path, ("9p", "overlay"))]
    assert order == ["9pnet.ko", "netfs.ko", "9p.ko", "overlay.ko"]
    with pytest.raises(guest.GuestUnavailable, match="no module virtio_pci.ko"):
        guest.load_order(tmp_path, ("virtio_pci",))


def test_a_missing_guest_kernel_is_named(tmp_path):
    with pytest.raises(guest.GuestUnavailable, match=r"no unpacked guest kernel under .*run `bash .ci/setup-guest.sh`"):
        guest.find_kernel(tmp_path)


def test_the_guest_runs_every_namespace_attack_and_no_v1_only_test():
    args = suite.pytest_args()
    assert "tests/isolation/test_escapes.py::test_each_selftest_attack_is_stopped[namespace-fork_bomb]" in args
    assert "--deselect=tests/executors/test_namespace.py::test_cgroup_v1_create_limit_kill_stats_remove" in args
