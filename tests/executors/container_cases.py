"""The promises of the Docker-API executors, written once and run against a real Docker and a real Podman.

``test_docker.py`` and ``test_podman.py`` import these with their backend. A daemon
that is not running here skips the tests with the reason, unless the backend is
named in EXPBUILD_REQUIRE_BACKENDS (comma list): then it fails.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import docker.errors
import pytest

from expbuild_isolation.executors.base import (ExecutionRequest, ExecutorUnavailable, IsolationLevel,
                                               IsolationUnavailable, NetworkPolicy, ResourceLimits, TerminationReason)
from expbuild_isolation.executors.config import DockerConfig, HostConfig, PodmanConfig
from expbuild_isolation.executors.containers.docker import DockerExecutor
from expbuild_isolation.executors.containers.podman import PodmanExecutor
from expbuild_isolation.executors.select import select_executor
from expbuild_isolation.executors.workspace import create_workspace, remove_workspace

ENGINES = {"docker": (DockerExecutor, DockerConfig), "podman": (PodmanExecutor, PodmanConfig)}
WORKER, OWNER, DEADLINE = "expbuild.io/worker-id", "expbuild.io/owner", "expbuild.io/sweep-after"


def required(backend: str) -> bool:
    return backend in {b.strip() for b in os.environ.get("EXPBUILD_REQUIRE_BACKENDS", "").split(",")}


def make(backend: str, **settings) -> DockerExecutor:  # type: ignore[no-untyped-def]
    cls, config = ENGINES[backend]
    settings.setdefault("worker_id", f"test-{uuid.uuid4().hex[:8]}")
    return cls(config(**settings))


async def usable(backend: str, **settings) -> DockerExecutor:  # type: ignore[no-untyped-def]
    """A healthy executor, or a skip (a failure when the backend is required) naming why not."""
    executor = make(backend, **settings)
    try:
        await executor.health_check()
    except ExecutorUnavailable as exc:
        if required(backend):
            pytest.fail(f"{backend} is required (EXPBUILD_REQUIRE_BACKENDS) but unavailable: {exc}")
        pytest.skip(f"{backend} unavailable: {exc}")
    return executor


def leftovers(executor: DockerExecutor) -> list[str]:
    """Containers carrying this executor's worker id, and parent cgroups of them (none may remain)."""
    engine = executor.name
    names = subprocess.run([engine, "ps", "-a", "--filter", f"label=expbuild.io/worker-id={executor.worker_id}",
                            "--format", "{{.Names}}"], capture_output=True, text=True, check=True).stdout.split()
    for base in Path("/sys/fs/cgroup").iterdir():
        top = base / executor.cgroup_top
        if top.is_dir():
            names += [str(d) for d in top.iterdir() if d.is_dir() and d.name in names]
    return names


def labelled(executor: DockerExecutor, labels: dict[str, str], *argv: str):  # type: ignore[no-untyped-def]
    """A running container with ``labels``, made behind the executor's back (as another worker would)."""
    container = executor.client().containers.create(executor.config.image, list(argv or ("sleep", "300")),
                                                    labels=labels, network_mode="none")
    container.start()
    return container


def left_by_a_killed_worker(engine: str, worker_id: str, image: str) -> str:
    """A running container of ``worker_id`` whose owner (a pid of this host) has ended, made by the engine's
    command line as a killed worker would have left it; returns its id."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    labels = {"expbuild.io/worker-id": worker_id, "expbuild.io/owner": f"{socket.gethostname()}:{gone.pid}:1"}
    return subprocess.run([engine, "run", "-d", "--network", "none",
                           *(f"--label={key}={value}" for key, value in labels.items()), image, "sleep", "300"],
                          capture_output=True, text=True, check=True).stdout.strip()


def running_of(engine: str, worker_id: str) -> list[str]:
    """Ids of the running containers of ``worker_id``, as the engine lists them."""
    return subprocess.run([engine, "ps", "-q", "--no-trunc", "--filter", f"label=expbuild.io/worker-id={worker_id}"],
                          capture_output=True, text=True, check=True).stdout.split()


def request(workspace: Path, *argv: str, **fields) -> ExecutionRequest:  # type: ignore[no-untyped-def]
    return ExecutionRequest(task_id=f"t-{uuid.uuid4().hex[:6]}", argv=argv, workspace=workspace, **fields)


@pytest.fixture
def workspace():  # type: ignore[no-untyped-def]
    path = create_workspace()
    yield path
    remove_workspace(path)


def cases(backend: str) -> dict:  # noqa: C901 - one closure per promise
    @pytest.fixture
    async def executor():  # type: ignore[no-untyped-def]
        ex = await usable(backend)
        await ex.warmup()
        yield ex
        await ex.close()
        assert leftovers(ex) == []

    async def test_hello_runs_as_nobody_in_the_workspace(executor, workspace):  # type: ignore[no-untyped-def]
        result = await executor.execute(request(workspace, "sh", "-c", "echo hello; echo oops >&2; id -u; pwd"))
        assert result.reason == TerminationReason.COMPLETED and result.exit_code == 0
        assert result.stdout == b"hello\n65534\n/workspace\n" and result.stderr == b"oops\n"
        assert result.executor == backend and result.isolation_level == IsolationLevel.CONTAINER
        assert result.stats.cpu_time_seconds is not None and result.stats.peak_memory_bytes

    async def test_exit_codes_are_reported(executor, workspace):  # type: ignore[no-untyped-def]
        result = await executor.execute(request(workspace, "sh", "-c", "exit 3"))
        assert (result.exit_code, result.reason) == (3, TerminationReason.NON_ZERO_EXIT)
        missing = await executor.execute(request(workspace, "no-such-program"))
        assert (missing.exit_code, missing.reason) == (127, TerminationReason.START_FAILED)

    async def test_a_timeout_kills_the_task_and_leaves_no_container(executor, workspace):  # type: ignore[no-untyped-def]
        result = await executor.execute(request(workspace, "sh", "-c", "sleep 30 & sleep 30", timeout_seconds=1))
        assert (result.exit_code, result.reason) == (124, TerminationReason.DEADLINE_EXCEEDED)
        assert result.stats.duration_seconds < 10
        assert [n for n in leftovers(executor) if not executor.pool or not executor.pool.owns(n)] == []

    async def test_a_huge_timeout_runs_the_task(executor, workspace):  # type: ignore[no-untyped-def]
        """A request built directly (the API bounds timeout, this library does not) must still run."""
        result = await executor.execute(request(workspace, "sh", "-c", "echo ran",
                                                timeout_seconds=999999999999 * 3600.0))
        assert (result.reason, result.stdout) == (TerminationReason.COMPLETED, b"ran\n"), result

    async def test_memory_past_the_limit_ends_in_oom_killed(executor, workspace):  # type: ignore[no-untyped-def]
        result = await executor.execute(request(workspace, "sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a)",
                                                limits=ResourceLimits(memory_bytes=32 << 20)))
        assert (result.exit_code, result.reason) == (137, TerminationReason.OOM_KILLED)

    async def test_a_child_oom_killed_in_a_warm_container_is_reported(workspace):  # type: ignore[no-untyped-def]
        """The shell goes on after the kernel killed its child; the warm path makes its cgroup ahead."""
        executor = await usable(backend, pool_size=1)
        hog = 'x=$(head -c 200000000 /dev/zero | tr "\\0" a)'
        task = request(workspace, "sh", "-c", f"sh -c '{hog}'; echo child=$?",
                       limits=ResourceLimits(memory_bytes=48 << 20))
        try:
            await executor.pool.fill(task)
            assert executor.pool.ready_count() == 1
            result = await executor.execute(task)
            assert executor.pool.used, "the task did not run in the warm container"
        finally:
            await executor.close()
        assert result.stdout == b"child=137\n", result
        assert (result.exit_code, result.reason) == (137, TerminationReason.OOM_KILLED)
        assert leftovers(executor) == []

    async def test_outputs_are_collected_and_symlinks_refused(executor, workspace):  # type: ignore[no-untyped-def]
        result = await executor.execute(request(
            workspace, "sh", "-c", "mkdir -p out && printf abc > out/a.txt && ln -s /etc/passwd out/link",
            output_paths=("out/a.txt", "out/link", "out/missing")))
        assert [(f.path, f.size_bytes) for f in result.output_files] == [("out/a.txt", 3)]
        assert len(result.output_problems) == 2 and "symlink" in result.output_problems[0]

    async def test_the_sandbox_is_hardened(executor, workspace):  # type: ignore[no-untyped-def]
        script = ("touch /rootfile 2>/dev/null && echo root-writable; "
                  "cp /bin/busybox /tmp/b && /tmp/b true 2>/dev/null && echo tmp-exec; "
                  "grep -c : /proc/net/dev; grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status; "
                  "grep Seccomp: /proc/self/status")
        result = await executor.execute(request(workspace, "sh", "-c", script))
        out = result.stdout.decode()
        assert "root-writable" not in out and "tmp-exec" not in out
        assert out.splitlines()[0] == "1"                   # loopback only
        assert "CapEff:\t0000000000000000" in out and "NoNewPrivs:\t1" in out and "Seccomp:\t2" in out

    async def test_cancelling_a_task_removes_its_container(executor, workspace):  # type: ignore[no-untyped-def]
        task = asyncio.ensure_future(executor.execute(request(workspace, "sleep", "30")))
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.5)  # removal is shielded: it finishes in the background
        assert [n for n in leftovers(executor) if not executor.pool or not executor.pool.owns(n)] == []

    async def test_a_wrong_socket_path_is_named(tmp_path):  # type: ignore[no-untyped-def]
        with pytest.raises(ExecutorUnavailable, match="no socket at /nonexistent/engine.sock"):
            await make(backend, socket_path="/nonexistent/engine.sock").health_check()
        not_socket = tmp_path / "plain-file"
        not_socket.write_text("")
        with pytest.raises(ExecutorUnavailable, match="is not a socket"):
            await make(backend, socket_path=str(not_socket)).health_check()

    async def test_a_daemon_that_does_not_answer_is_named(tmp_path):  # type: ignore[no-untyped-def]
        dead = socket.socket(socket.AF_UNIX)
        dead.bind(str(tmp_path / "dead.sock"))  # bound, never listening: connection refused
        try:
            with pytest.raises(ExecutorUnavailable, match="does not answer"):
                await make(backend, socket_path=str(tmp_path / "dead.sock")).health_check()
        finally:
            dead.close()

    async def test_a_missing_image_is_named():  # type: ignore[no-untyped-def]
        executor = await usable(backend)
        with pytest.raises(ExecutorUnavailable, match="image 'localhost/expbuild-absent:1' is not present"):
            await make(backend, image="localhost/expbuild-absent:1").health_check()
        await executor.close()

    async def test_auto_moves_on_but_never_below_the_floor(workspace):  # type: ignore[no-untyped-def]
        from expbuild_isolation.executors.host import HostExecutor
        chain = [make(backend, socket_path="/nonexistent/engine.sock"), HostExecutor(HostConfig())]
        with pytest.raises(IsolationUnavailable, match=f"{backend}: unavailable .*no socket.*host: isolation .* is below the task.s minimum Container"):
            await select_executor(chain, request(workspace, "true"))
        relaxed = request(workspace, "true", minimum_isolation=IsolationLevel.NONE, seccomp_profile="Unconfined",
                          limits=ResourceLimits(network=NetworkPolicy.full()))
        assert (await select_executor(chain, relaxed)).name == "host"

    async def test_200_tasks_leave_nothing_behind_and_no_warm_container_is_reused(workspace):  # type: ignore[no-untyped-def]
        executor = await usable(backend, pool_size=4)
        await executor.warmup()
        gate = asyncio.Semaphore(4)

        async def one(i: int):  # type: ignore[no-untyped-def]
            async with gate:
                ws = create_workspace()
                try:
                    return await executor.execute(request(ws, "sh", "-c", f"echo {i}"))
                finally:
                    remove_workspace(ws)

        results = await asyncio.gather(*(one(i) for i in range(200)))
        assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(200)]
        used = executor.pool.used
        assert len(used) == len(set(used)) and len(used) > 50   # warm containers ran most tasks, each once
        await executor.close()
        assert leftovers(executor) == []
        assert not list(Path("/run/expbuild").glob(f"{backend}-pool-{os.getpid()}/*"))

    async def test_a_starting_worker_sweeps_dead_owners_and_past_deadlines():  # type: ignore[no-untyped-def]
        """A pid reused by another process is no owner; a container past its deadline goes, whoever owns it."""
        executor = await usable(backend)
        worker, other = executor.worker_id, f"test-{uuid.uuid4().hex[:8]}"
        alive, host = executor.owner, socket.gethostname()   # this process: a live owner
        soon, past = str(int(time.time()) + 3600), str(int(time.time()) - 1)
        made = {
            "reused pid": labelled(executor, {WORKER: worker, OWNER: f"{host}:{os.getpid()}:1"}),
            "past its deadline": labelled(executor, {WORKER: other, OWNER: alive, DEADLINE: past}),
            # the controls: a live owner's container of this worker and of another, before their deadlines
            "live owner": labelled(executor, {WORKER: worker, OWNER: alive, DEADLINE: soon}),
            "another worker's": labelled(executor, {WORKER: other, OWNER: f"{host}:1:1", DEADLINE: soon}),
        }
        try:
            await executor.warmup()
            names = set(subprocess.run([backend, "ps", "-a", "--format", "{{.Names}}"], capture_output=True,
                                       text=True, check=True).stdout.split())
            assert {why for why, c in made.items() if c.name in names} == {"live owner", "another worker's"}
        finally:
            for container in made.values():
                subprocess.run([backend, "rm", "-f", container.name], capture_output=True, check=False)
            await executor.close()

    async def test_the_sweep_survives_a_container_removed_after_its_listing(monkeypatch):  # type: ignore[no-untyped-def]
        """Seen when tests share a daemon: another executor removes a container while the sweep looks at it."""
        executor = await usable(backend)
        # this worker's, of a live owner: no sweep removes it itself, every listing of ours names it
        doomed = labelled(executor, {WORKER: executor.worker_id, OWNER: executor.owner})
        api, removed = executor.client().api, []
        listing = api.containers

        def listed_then_removed(*args, **kwargs):  # type: ignore[no-untyped-def]
            found = listing(*args, **kwargs)
            if not removed and any(entry["Id"] == doomed.id for entry in found):
                api.remove_container(doomed.id, force=True)
                removed.append(doomed.name)
            return found

        monkeypatch.setattr(api, "containers", listed_then_removed)
        try:
            await executor.warmup()
        finally:
            await executor.close()
        assert removed, "no listing of the sweep named the container"

    async def test_a_container_that_stops_as_it_is_removed_is_removed_all_the_same(executor, monkeypatch):  # type: ignore[no-untyped-def]
        """Seen with Podman under load: a cancelled task's container ends itself (its attached stdin closes)
        while the forced removal kills it, and the daemon refuses that removal; the refusal, injected once
        here, must not leave the container behind."""
        container = labelled(executor, {WORKER: executor.worker_id, OWNER: executor.owner})
        api, refused = executor.client().api, []
        removal = api.remove_container

        def refused_once(*args, **kwargs):  # type: ignore[no-untyped-def]
            if not refused:
                refused.append(args)
                raise docker.errors.APIError(
                    "500 Server Error: Internal Server Error", explanation=(
                        f"cannot remove container {container.id} as it could not be stopped: sending SIGKILL to "
                        f"container {container.id}: container state improper: stopped"))
            return removal(*args, **kwargs)

        monkeypatch.setattr(api, "remove_container", refused_once)
        try:
            await asyncio.to_thread(executor.remove, container.name, None)
        finally:
            monkeypatch.undo()
            left = container.name in leftovers(executor)
            subprocess.run([backend, "rm", "-f", container.name], capture_output=True, check=False)
        assert refused and not left

    return {name: value for name, value in locals().items() if name.startswith("test_") or name == "executor"} | {"workspace": workspace}
