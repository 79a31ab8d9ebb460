"""Render docs/capabilities.md from the escape suite's own declarations; starts no backend.

    python3 -m tests.isolation.matrix > docs/capabilities.md

The attack x backend table comes from the selftest's attack list
(``expbuild_isolation.selftest.catalog.ATTACKS``: what a backend is expected to
lose follows from its ``capabilities()``), then ``test_escapes.py``'s own
attacks (one per test, its limits read from the ``hostile(...)`` call, what a
backend is declared to lose, or must not be attacked with, from
``conftest.EXPECTED``), and each backend's ``capabilities()`` (what it refuses
up front, as selection would). The
per-backend limits table comes from ``capabilities()`` too. What cannot be
derived (the Kubernetes Job path, measured numbers, known gaps) is the fixed
text in ``TRAILER``; ``test_matrix.py`` fails when the committed file drifts.
"""

from __future__ import annotations

import ast
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path

from expbuild_isolation.api.task import NetworkMode
from expbuild_isolation.executors.base import ExecutionRequest, ExecutorCapabilities
from expbuild_isolation.executors.config import DockerConfig, HostConfig, NamespaceConfig, PodmanConfig
from expbuild_isolation.executors.containers.docker import DockerExecutor
from expbuild_isolation.executors.containers.podman import PodmanExecutor
from expbuild_isolation.executors.containers.spec import capabilities_for
from expbuild_isolation.executors.host import HostExecutor
from expbuild_isolation.executors.namespace.executor import NamespaceExecutor
from expbuild_isolation.executors.select import unmet_requirements
from expbuild_isolation.selftest import attack as selftest_attack
from expbuild_isolation.selftest.catalog import ATTACKS as SELFTEST_ATTACKS
from expbuild_isolation.selftest.report import attack_row_label, markdown_row

from ..cgroupv2 import suite as guest_suite
from .conftest import ATTACK_NAMES, BACKENDS, SHARED_TEST, Skip, expectation

ESCAPES = Path(__file__).with_name("test_escapes.py")
REGENERATE = "python3 -m tests.isolation.matrix > docs/capabilities.md"
MiB = 1 << 20
# hostile() keywords that decide whether a backend accepts the request at all
SELECTION_KEYWORDS = ("memory", "pids", "disk", "network", "seccomp")


@dataclass(frozen=True)
class Attack:
    key: str           # the name used in EXPECTED, or the selftest attack's key
    sentence: str      # the promise, from the test's name or the selftest attack
    limits: dict       # the hostile() keywords in SELECTION_KEYWORDS
    shared: selftest_attack.Attack | None = None   # a selftest attack: expectations from capabilities()

    def request(self) -> ExecutionRequest:
        return selftest_attack.hostile(Path("/nonexistent"), "true", **self.limits)


def attacks(source: Path = ESCAPES) -> list[Attack]:
    """The selftest's attacks, then the suite's own in file order, read from its source (nothing is run)."""
    found = [Attack(a.key, a.sentence, dict(a.selection), a) for a in SELFTEST_ATTACKS]
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.AsyncFunctionDef) and node.name.startswith("test_") and node.name != SHARED_TEST:
            name = node.name.removeprefix("test_")
            sentence = name.replace("_", " ").replace("hosts ", "host's ")
            found.append(Attack(ATTACK_NAMES.get(name, name), sentence, _hostile_limits(node)))
    return found


def _hostile_limits(function: ast.AST) -> dict:
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "hostile":
            return {kw.arg: eval(compile(ast.Expression(kw.value), str(ESCAPES), "eval"),  # noqa: S307 - our own test
                                 {"__builtins__": {}, "MiB": MiB, "NetworkMode": NetworkMode})
                    for kw in node.keywords if kw.arg in SELECTION_KEYWORDS}
    return {}


def backend_capabilities() -> dict[str, ExecutorCapabilities]:
    """What each backend declares with its default configuration, without starting it."""
    # NamespaceExecutor() probes the machine and sweeps old cgroups; capabilities() reads only its config.
    namespace = NamespaceExecutor.__new__(NamespaceExecutor)
    namespace.config = NamespaceConfig()
    return {"host": HostExecutor(HostConfig()).capabilities(), "namespace": namespace.capabilities(),
            "docker": capabilities_for(DockerConfig()), "podman": capabilities_for(PodmanConfig()),
            "docker + runsc": capabilities_for(DockerConfig(runtime="runsc"))}


EXECUTOR_CLASSES = {"host": HostExecutor, "namespace": NamespaceExecutor, "docker": DockerExecutor,
                    "podman": PodmanExecutor}


def refuses_up_front(backend: str) -> bool:
    """Whether the backend's execute() itself checks a request against its capabilities (the suite then
    skips the attack); the others run whatever they are handed and leave that check to selection."""
    return "unmet_requirements(" in inspect.getsource(EXECUTOR_CLASSES[backend].execute)


def verdict(backend: str, attack: Attack, caps: ExecutorCapabilities) -> str:
    expected = expectation(backend, attack.key, caps, attack.shared)
    if isinstance(expected, Skip):
        return f"– not run: {expected.reason}"
    if expected is not None:
        return f"✘ {expected}"
    missing = unmet_requirements(caps, attack.request())
    if missing and refuses_up_front(backend):
        return f"– refused up front: {'; '.join(missing)}"
    return "✔"


_row = markdown_row


# The CI machine runs cgroup v1 (hybrid), and the whole suite runs there; the cgroup v2 guest
# (tests/cgroupv2) runs the attacks on the backends in its suite.ESCAPE_BACKENDS.
CI_HIERARCHY = "v1"


def proven_on(attack: Attack, caps: dict[str, ExecutorCapabilities]) -> str:
    """Which cgroup hierarchy ran the attack on which backend (an attack not run or refused proves nothing)."""
    ran = [b for b in BACKENDS if not verdict(b, attack, caps[b]).startswith("–")]
    in_guest = [b for b in ran if b in guest_suite.ESCAPE_BACKENDS]
    return "; ".join(f"{hierarchy}: {', '.join(names)}"
                     for hierarchy, names in ((CI_HIERARCHY, ran), ("v2", in_guest)) if names)


def attack_table() -> str:
    caps = backend_capabilities()
    lines = [_row(["Attack", *BACKENDS, "cgroup hierarchy"]), _row(["---"] * (len(BACKENDS) + 2))]
    for attack in attacks():
        lines.append(_row([attack_row_label(attack),
                           *(verdict(backend, attack, caps[backend]) for backend in BACKENDS),
                           proven_on(attack, caps)]))
    return "\n".join(lines) + "\n"


def _yes(flag: bool) -> str:
    return "✔" if flag else "✘"


def limits_table() -> str:
    caps = backend_capabilities()
    names = list(caps)
    rows = [
        ("isolation level", lambda c: c.isolation_level.value),
        ("cpu limit", lambda c: _yes(c.supports_cpu_limit)),
        ("memory limit", lambda c: _yes(c.supports_memory_limit)),
        ("disk limit", lambda c: _yes(c.supports_disk_limit)),
        ("pids limit", lambda c: _yes(c.supports_pids_limit)),
        ("network policies", lambda c: ", ".join(m.value for m in NetworkMode if m in c.network_policies)),
        ("read-only root", lambda c: _yes(c.supports_readonly_rootfs)),
        ("seccomp profiles", lambda c: ", ".join(sorted(c.seccomp_profiles))),
        ("runs the task's image", lambda c: _yes(c.uses_image)),
    ]
    lines = [_row(["", *names]), _row(["---"] * (len(names) + 1))]
    lines += [_row([label, *(get(caps[name]) for name in names)]) for label, get in rows]
    return "\n".join(lines) + "\n"


HEADER = f"""<!-- Generated by `{REGENERATE}` from tests/isolation/ and the executors' capabilities(). Do not edit. -->

# Executor capabilities

What each backend enforces, as the isolation suite (`tests/isolation/test_escapes.py`) declares and checks
it. `.ci/run` sets `EXPBUILD_REQUIRE_BACKENDS=host,namespace,docker,podman`, so there a backend that
cannot start fails the run instead of being skipped. The tables below are derived, not written: the first
attacks are those `expbuild-isolation selftest` runs (`operator/expbuild_isolation/selftest/`), where a
backend is expected to lose what its `capabilities()` do not claim to stop; the others are read from the
test file, their expected losses from `EXPECTED` in `tests/isolation/conftest.py`; the limits come from
each backend's `capabilities()` with its default configuration.

## Attacks

Check a machine yourself with `expbuild-isolation selftest` (as root for the namespace backend): it runs
the first {len(SELFTEST_ATTACKS)} attacks below (down to `{SELFTEST_ATTACKS[-1].key}`) against every configured backend, judged
from the host as the suite judges them, and prints their rows of this table for that machine.

✔ the attack fails (the test passes). ✘ the backend is expected to lose (a strict xfail: if it ever wins,
the suite reports it). "refused up front": the backend does not claim the limit the attack sets, so it
refuses the task before running it (`IsolationUnavailable`), exactly as executor selection would skip it.
"not run": running the attack there would harm the machine. "cgroup hierarchy": where each backend's
verdict was proven. CI's machine runs cgroup v1 (hybrid) and runs the whole suite; in the same run,
`tests/cgroupv2/test_guest.py` boots a cgroup-v2-only kernel under QEMU and runs there the attacks on the
backends listed after "v2", the namespace executor's tests and the Docker backend's parent-cgroup tests
(`tests/cgroupv2/suite.py`).

"""

LIMITS_INTRO = """
## Limits each backend declares

From `capabilities()`; selection (`executors/select.py`) never hands a task to a backend that lacks a limit
the task sets. `docker + runsc` is the Docker backend with `runtime = "runsc"` (gVisor) in its worker
configuration: the same limits, isolation level VM. The suite does not attack it (it is not in `BACKENDS`).
Docker and Podman offer network Full only when configured with `network_mode = "bridge"`.

"""

TRAILER = """
## Beyond the attack list

| | host | namespace | docker / podman | Kubernetes Job |
|---|---|---|---|---|
| isolation level reported | Process | Container | Container; VM with a `runsc` or `kata*` runtime | Container; VM with a RuntimeClass (the task's, or `EXPBUILD_VM_RUNTIME_CLASS` for minimum VM) |
| filesystem | shares the host's | fresh root: read-only binds of /usr, /bin, /lib*, minimal /etc; workspace at /workspace; noexec tmpfs /tmp | image rootfs, read-only by default; workspace bind-mounted at /workspace; noexec tmpfs /tmp | image rootfs, `readOnlyRootFilesystem` from the task; workspace and /tmp are memory-backed emptyDirs |
| network None / Localhost | not enforced (only Full offered) | own net namespace; None keeps even loopback down | `network_mode = "none"` (loopback only, for both) | NetworkPolicy denying all ingress and egress (only as good as the CNI's NetworkPolicy support) |
| network Restricted | ✘ | ✘ | ✘ | NetworkPolicy egress to the allowed CIDRs (TCP port when given); hostnames only with `EXPBUILD_FQDN_POLICIES=true` (Cilium `toFQDNs`) |
| pids | ✘ | cgroup `pids.max` | engine `pids_limit` | ✘ per task (only the kubelet's node-wide pod pids limit); `auto` sends tasks with `resources.pids` to a node agent |
| disk | ✘ | the workspace itself moves onto a tmpfs of that size, shared with /tmp, until it is removed (nothing is copied back) | ✘ (refused up front) | `ephemeral-storage` limit and emptyDir `sizeLimit`: the kubelet evicts after the fact; `EXPBUILD_HARD_DISK_LIMITS=true` sends such tasks to an agent |
| timeout, detached grandchildren | `reaper.py` (a child subreaper) kills the whole tree | everything left in the task's cgroup is killed | the container is killed | `activeDeadlineSeconds`: the kubelet kills the pod, so every process in it; the supervisor forwards TERM to the command |
| no_new_privs, capabilities | ✘ | no_new_privs, no capabilities | `no-new-privileges`, `cap_drop ALL` | PSA restricted: `allowPrivilegeEscalation: false`, drop ALL, `runAsNonRoot`, uid 0 refused |
| seccomp | ✘ | libseccomp filter from the project's profiles | OCI JSON from the same profiles | `RuntimeDefault`, or `Localhost` (the project's profiles, installed by the node agent); `Unconfined` only with minimum None (pod annotated privileged) |
| user namespace | ✘ | ✘ (the executor needs root; no unprivileged user-namespace mode) | docker: ✘ (unless the daemon remaps); podman: `userns` (auto, keep-id, nomap) or `rootless` | whatever the node's runtime does |
| output symlinks | refused (outputs are opened without following links) | refused | refused | the supervisor follows links inside the pod only (it cannot see the node); digests only |
| OOM kills | ✘ (no memory limit) | the task cgroup's counter | the task's parent cgroup: v2 `memory.events`; v1 an OOM notification on the parent, which holds the limit | `OOMKilled` as the kubelet reports the container |
| log tails | the last bytes of stdout and of stderr | the same | the same, read live through the engine's attach stream | the pod log's last bytes, stdout and stderr mixed |
| stats reported | CPU time and peak RSS from rusage | cgroup CPU time, peak memory, block I/O | the container's cgroup: CPU time, peak memory, block I/O | CPU time and peak memory from the cgroup the supervisor sees, self-reported (below) |

For the Job path, two kinds of facts reach the status. From the kubelet and the Job controller (trusted):
phase, `OOMKilled`, `DeadlineExceeded`, eviction, node, start and end times, and the exit code of the
container's main process (the supervisor, which passes on the command's). Self-reported by the
pod through its termination message (written by the supervisor, which runs in the same pod as the
untrusted command, so a task can forge it): output digests and sizes, CPU time and peak memory. Log tails
come from the pod log, which mixes stdout and stderr.

## Measured

On the development machine (cgroup v1 hybrid); reproduce with the command shown.

| what | result | command |
|---|---|---|
| namespace executor start, median | 6.0–6.4 ms; `bwrap --unshare-all` 7.4 ms; plain subprocess 1.4–1.8 ms | `python tests/bench/bench_namespace.py -n 50` |
| CPU overhead inside the namespace executor | within ±1.5 % of the host | `python tests/bench/bench_namespace.py -n 50` |
| Docker cold start | 1.01× `docker run --rm` (0.20 s) | `python3 tests/bench/bench_docker.py --n 25` |
| Docker warm pool start | 0.16–0.18× `docker run --rm` (0.033 s) | `python3 tests/bench/bench_docker.py --n 25` |
| node agent, creation to Succeeded, p50 | 0.51 s | `python tests/bench/bench_agent.py` |
| operator against KMock, creation to Job, p50 | 1.5–1.9 ms for one task; 2.7–14 ms for 100 created back to back (do-nothing peer with the same traffic: 2.9–5.5 ms); 0.089–0.150 s for 200 at once (median 0.105 s, 7 runs), p99 0.28–0.40 s (peer: 0.079–0.128 s, the emulator's floor); 2.6–4.35 ms operator CPU and 4 API requests per task; RSS 116–128 MiB with 1,000 tasks | `python tests/bench/bench_operator.py` |
| REAPI action through BuildGrid | 166 ms per action; Bazel `linux-sandbox` 30 ms | `python3 tests/bench/bench_reapi.py --runs 3` |
| cgroup v2 guest (QEMU `-accel tcg`, 2 vCPUs, 3 GiB), boot to its init script | 3–9 s of guest uptime, varying with the machine's load | `python3 -m tests.cgroupv2.guest tests/cgroupv2/test_v2_limits.py` |
| the v2 suite in the guest (`tests/cgroupv2/suite.py`, dockerd included) | 39 tests: 4.5–5.4 min of wall time, of it 3.4–4 min pytest inside and 12–25 s dockerd's start (this 2-core machine, with other work running) | `python3 -m pytest -q -rP tests/cgroupv2/test_guest.py` |

## Known gaps

- cgroup v2 is proven in an emulated guest: Debian's 6.1 kernel, no systemd, the worker in the root cgroup.
  Kernels before 5.19 have no `memory.peak`: no peak memory on v2 there (not proven).
- The namespace executor cannot run in a container's or pod's own cgroup namespace on a systemd cgroup v2
  machine (cgroup2 mounted `nsdelegate`), so not in the node agent's pod there: its tasks cannot join
  `/sys/fs/cgroup/<parent>/...`. It says so at its health check (`executors/namespace/cgroup_join.py`), so selection
  moves on; nesting the tasks' cgroups under the agent's own would need the agent to move itself to a leaf.
- The namespace executor needs root: there is no unprivileged user-namespace mode.
- Docker and Podman: no disk limit, no Restricted network mode; a fork refused at the pids limit is not
  reported as `PidsLimit` (the task ends by its timeout or with a non-zero exit): on cgroup v1, and on v2 with
  the guest's 6.1 kernel, the refusal is counted in the container's own cgroup, which the engine deletes.
- Job path: outputs and stats are self-reported from inside the pod; logs mix stdout and stderr; no per-task
  pids limit; disk is enforced by eviction, not by refusal.
- The REAPI worker speaks plaintext gRPC only.
"""


def render() -> str:
    return HEADER + attack_table() + LIMITS_INTRO + limits_table() + TRAILER


if __name__ == "__main__":
    sys.stdout.write(render())
