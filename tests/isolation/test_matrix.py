"""docs/capabilities.md is what the escape suite declares; no backend is started here."""

from pathlib import Path

from expbuild_isolation.selftest.catalog import ATTACKS

from . import matrix
from .conftest import ATTACK_NAMES, BACKENDS, EXPECTED

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "capabilities.md"


def test_committed_capability_matrix_matches_the_suite():
    assert DOC.read_text() == matrix.render(), f"docs/capabilities.md is stale: run `{matrix.REGENERATE}`"


def test_every_attack_in_the_suite_has_a_row():
    keys = [attack.key for attack in matrix.attacks()]
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted([*ATTACK_NAMES.values(), *(a.key for a in ATTACKS)]), \
        "add the new test to conftest.ATTACK_NAMES"
    for attack in matrix.attacks():
        assert f"(`{attack.key}`)" in matrix.attack_table()


def test_every_expectation_names_a_known_backend_and_attack():
    keys = {attack.key for attack in matrix.attacks()}
    assert {(b, a) for b, a in EXPECTED if b not in BACKENDS or a not in keys} == set()


def test_limits_are_read_from_the_hostile_calls_and_the_selftest_attacks():
    limits = {attack.key: attack.limits for attack in matrix.attacks()}
    assert limits["disk"]["disk"] == 16 << 20
    assert limits["fork_bomb"]["pids"] == 64
    assert limits["default_seccomp"]["seccomp"] == "RuntimeDefault"


def test_the_selftest_attacks_come_first_and_their_expected_losses_follow_from_capabilities():
    rows = matrix.attacks()
    assert [row.key for row in rows[:len(ATTACKS)]] == [a.key for a in ATTACKS]
    caps = matrix.backend_capabilities()
    assert {(b, r.key) for r in rows[:len(ATTACKS)] for b in BACKENDS if matrix.verdict(b, r, caps[b]) != "✔"} == \
        {("host", key) for key in ("secret_read", "write_outside", "tcp_to_host", "host_processes", "fork_bomb",
                                   "memory", "user_namespace")}
    assert not [key for backend, key in EXPECTED if key in {a.key for a in ATTACKS}], "one source of expectations"


def test_only_container_backends_refuse_up_front_and_docker_has_no_disk_limit():
    assert [b for b in BACKENDS if matrix.refuses_up_front(b)] == ["namespace", "docker", "podman"]
    disk = next(a for a in matrix.attacks() if a.key == "disk")
    caps = matrix.backend_capabilities()
    assert matrix.verdict("docker", disk, caps["docker"]).startswith("– refused up front")
    assert matrix.verdict("namespace", disk, caps["namespace"]) == "✔"


def test_each_attack_row_says_which_cgroup_hierarchy_proved_it():
    caps = matrix.backend_capabilities()
    fork_bomb = next(a for a in matrix.attacks() if a.key == "fork_bomb")
    assert matrix.proven_on(fork_bomb, caps) == "v1: namespace, docker, podman; v2: namespace"   # host: not run
    for attack in matrix.attacks():
        assert matrix.proven_on(attack, caps).startswith("v1: ") and "v2: namespace" in matrix.proven_on(attack, caps)
