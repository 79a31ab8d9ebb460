"""A real REAPI stack for tests and the benchmark: private PostgreSQL, BuildGrid, our worker, Bazel.

Everything lives in one temporary directory and on free 127.0.0.1 ports; nothing
system-wide is touched. ``missing_tools()`` says what is not installed (the
tests skip with that reason, or fail when EXPBUILD_REQUIRE_REAPI=1).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BGD_CANDIDATES = [os.environ.get("EXPBUILD_BGD", ""), "/opt/buildgrid/bin/bgd", shutil.which("bgd") or ""]


def bgd_path() -> str | None:
    return next((p for p in BGD_CANDIDATES if p and os.access(p, os.X_OK)), None)


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def missing_tools() -> list[str]:
    missing = []
    if bgd_path() is None:
        missing.append("BuildGrid (bgd; run .ci/setup-reapi.sh)")
    if pg_bin() is None:
        missing.append("PostgreSQL server (apt-get install postgresql)")
    if shutil.which("bazel") is None:
        missing.append("Bazel (apt-get install bazel-bootstrap)")
    try:
        import expbuild_isolation.worker.reapi.protos  # noqa: F401
    except ImportError as exc:
        missing.append(f"REAPI protos ({exc})")
    if os.geteuid() != 0:
        missing.append("root (the namespace executor and a private postgres cluster owned by 'postgres')")
    return missing


def require_tools() -> None:
    """Skip (fail under EXPBUILD_REQUIRE_REAPI=1) naming what this machine lacks for a real REAPI stack."""
    import pytest

    missing = missing_tools()
    if missing:
        message = "REAPI stack not available: " + "; ".join(missing)
        if os.environ.get("EXPBUILD_REQUIRE_REAPI") == "1":
            pytest.fail(message + " (EXPBUILD_REQUIRE_REAPI=1)")
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


BGD_CONFIG = """\
server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true
authorization:
  method: none
connections:
  - !sql-connection &sql
    connection-string: postgresql+psycopg2://bgd@127.0.0.1:{pg_port}/bgd
    pool-size: 20
    max-overflow: 20
storages:
  - !lru-storage &cas
    size: 1024MB
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: false
schedulers:
  - !sql-scheduler &sched
    sql: *sql
    storage: *cas
    action-cache: *ac
    bot-session-keepalive-timeout: {keepalive}
    poll-interval: 0.1
    assigners:            # the default assigns once a second (plus jitter): the latency of every action
      - !priority-age-assigner
        count: 1
        interval: 0.02
    property-set: !dynamic-property-set
      wildcard-property-keys: [container-image, isolation, executor, network, cpu, memory, disk, pids, seccomp]
instances:
  - name: ""
    services:
      - !action-cache
        cache: *ac
      - !execution
        scheduler: *sched
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
thread-pool-size: 64
"""


class ReapiStack:
    """Start with ``start()``, stop everything with ``stop()`` (also on failure); or ``with ReapiStack(...)``."""

    def __init__(self, root: Path, *, capacity: int = 2, keepalive: int = 20) -> None:
        self.root = root
        self.capacity = capacity
        self.keepalive = keepalive
        self.pg_port = free_port()
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.workers: list[subprocess.Popen] = []
        self.bazel_root = root / "bazel-root"

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    # -- PostgreSQL and BuildGrid ------------------------------------------------------------------------

    def start(self) -> ReapiStack:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the workers and Bazel reach into it (pytest's tmp dirs are 0700)
        self._start_postgres()
        self._start_buildgrid()
        return self

    def __enter__(self) -> ReapiStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _as_postgres(self, *argv: str) -> None:
        done = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr or done.stdout}")

    def _start_postgres(self) -> None:
        binaries = pg_bin()
        assert binaries is not None
        # outside pytest's 0700 tmp tree: the cluster runs as the 'postgres' user, who must reach it
        pg = self.pg_dir = Path(tempfile.mkdtemp(prefix="expbuild-pg-"))
        shutil.chown(pg, "postgres", "postgres")
        self._as_postgres(str(binaries / "initdb"), "-D", str(pg / "data"), "-A", "trust", "-U", "bgd",
                          "--no-sync", "-E", "UTF8")
        self._as_postgres(str(binaries / "pg_ctl"), "-D", str(pg / "data"), "-l", str(pg / "log"), "-w", "-o",
                          f"-c listen_addresses=127.0.0.1 -p {self.pg_port} -k {pg} -c fsync=off "
                          f"-c max_connections=200", "start")
        self._as_postgres(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "bgd", "bgd")
        subprocess.run([bgd_path(), "migrate", "apply", f"postgresql+psycopg2://bgd@127.0.0.1:{self.pg_port}/bgd"],
                       check=True, capture_output=True, timeout=120)

    def _start_buildgrid(self) -> None:
        config = self.root / "bgd.yml"
        config.write_text(BGD_CONFIG.format(port=self.port, pg_port=self.pg_port, keepalive=self.keepalive))
        log = open(self.root / "bgd.log", "wb")
        self.procs["bgd"] = subprocess.Popen([bgd_path(), "server", "start", str(config)], stdout=log,
                                             stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True)
        wait_port(self.port, 60, self.procs["bgd"])

    # -- our worker ------------------------------------------------------------------------------------------

    def worker_config(self, executor: str = "namespace", floor: str = "Container", extra: str = "") -> Path:
        """The worker file; ``extra`` is TOML appended after ``[executor]`` (e.g. ``[policy]``, ``[task_limits]``)."""
        path = self.root / f"worker-{executor}.toml"
        path.write_text(f'worker_id = "reapi-test"\nwork_dir = "{self.root / "work"}"\n'
                        f"max_concurrent_tasks = {self.capacity}\nisolation_minimum = \"{floor}\"\n"
                        f'[executor]\ntype = "{executor}"\n{extra}')
        return path

    def start_worker(self, executor: str = "namespace", *, bot_id: str = "reapi-test-bot",
                     metrics_port: int | None = None, floor: str = "Container", extra: str = "") -> subprocess.Popen:
        config = self.worker_config(executor, floor, extra)
        argv = [sys.executable, "-m", "expbuild_isolation.cli", "reapi-worker", "--server", self.url,
                "--config", str(config), "--bot-id", bot_id, "--cache-size", "256Mi"]
        if metrics_port:
            argv += ["--metrics-port", str(metrics_port)]
        log = open(self.root / f"worker-{len(self.workers)}.log", "wb")
        env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.workers.append(proc)
        return proc

    def worker_log(self, index: int = -1) -> str:
        number = index if index >= 0 else len(self.workers) + index
        return (self.root / f"worker-{number}.log").read_text(errors="replace")

    # -- Bazel -----------------------------------------------------------------------------------------------

    def bazel(self, workspace: Path, *args: str, remote: bool = True, timeout: float = 180,
              extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        startup = [f"--output_user_root={self.bazel_root}", "--host_jvm_args=-Xmx1g", "--batch_cpu_scheduling"]
        command, *rest = args
        flags = ["--jobs=2", "--color=no", "--curses=no", "--show_progress_rate_limit=5"]
        if remote:
            flags += [f"--remote_executor={self.url}", "--spawn_strategy=remote", "--genrule_strategy=remote",
                      "--remote_timeout=120"]
        argv = ["bazel", *startup, command, *(flags if command in ("build", "test") else []), *extra, *rest]
        return subprocess.run(argv, cwd=workspace, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HOME": str(self.root), "USER": "root"})

    # -- teardown --------------------------------------------------------------------------------------------

    def stop(self) -> None:
        for proc in self.workers:
            _terminate(proc)
        with contextlib.suppress(Exception):
            for workspace in self.root.glob("ws*"):
                subprocess.run(["bazel", f"--output_user_root={self.bazel_root}", "shutdown"], cwd=workspace,
                               capture_output=True, timeout=60)
        if "bgd" in self.procs:
            _terminate(self.procs["bgd"])
        binaries = pg_bin()
        pg = getattr(self, "pg_dir", None)
        if binaries and pg is not None:
            with contextlib.suppress(Exception):
                self._as_postgres(str(binaries / "pg_ctl"), "-D", str(pg / "data"), "-m", "immediate", "-w", "stop")
            shutil.rmtree(pg, ignore_errors=True)


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
