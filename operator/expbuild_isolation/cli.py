"""``expbuild-isolation``: run a task locally, check this machine's isolation, print the CRD, run the operator
or the node agent.

Errors are one line on stderr, never a traceback. ``run`` exits with the task's
own exit code (124 after a timeout; 1 when the command exited 0 but the task still
failed, e.g. an output was refused); 125 means the task could not be run at all
(invalid manifest, no executor meets its isolation floor), as with ``docker run``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import yaml

from . import __version__
from .api.task import ExecutionTaskStatus, Phase
from .selftest import report as selftest_report
from .selftest.catalog import ATTACKS
from .selftest.run import check_machine
from .worker.chain import LOCAL_BACKENDS, build_chain
from .worker.config import ConfigError, WorkerConfig, load_worker_config
from .worker.local import InvalidTask, load_task, run_task

EXIT_NOT_RUN = 125


class CliError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, InvalidTask, ConfigError) as exc:
        print(f"expbuild-isolation: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_NOT_RUN if args.command == "run" else 2
    except KeyboardInterrupt:
        print("expbuild-isolation: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an environment problem: still one line, traceback on request
        if os.environ.get("EXPBUILD_DEBUG"):
            raise
        print(f"expbuild-isolation: internal error: {type(exc).__name__}: {_one_line(str(exc))[:2000]} "
              f"(set EXPBUILD_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_NOT_RUN if args.command == "run" else 1


def _one_line(message: str) -> str:
    """Errors are one line: a newline that came from the input is shown escaped."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="expbuild-isolation", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an ExecutionTask manifest on this machine")
    run.add_argument("task", type=Path, help="ExecutionTask YAML file")
    run.add_argument("--executor", choices=["auto", "host", "namespace", "docker", "podman"],
                     help="backend to use (default: the task's isolation.executor, else auto)")
    run.add_argument("--config", type=Path, help="worker TOML file (executors, chain, defaults)")
    run.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    run.set_defaults(func=_run)

    selftest = sub.add_parser(
        "selftest", help="attack this machine's backends (harmlessly) and check each stops what it claims to",
        description=textwrap.fill(
            "Run the escape suite's harmless attacks against every backend of the worker file (or the ones "
            "named), judge each from the host side with its positive control, and print the attack x backend "
            "matrix of docs/capabilities.md with the isolation level each backend reached. Needs root for the "
            "namespace backend, and the Docker or Podman socket for those.", width=100),
        epilog=_selftest_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    selftest.add_argument("--executor", action="append", choices=LOCAL_BACKENDS, default=[],
                          help="backend to check (repeatable; default: every backend in the worker file's chain)")
    selftest.add_argument("--attack", action="append", choices=[attack.key for attack in ATTACKS], default=[],
                          help="run only this attack (repeatable; default: all of them)")
    selftest.add_argument("--config", type=Path, help="worker TOML file (executors and how they are configured)")
    selftest.add_argument("-o", "--output", choices=["table", "json"], default="table")
    selftest.set_defaults(func=_selftest)

    crd = sub.add_parser("crd", help="print the ExecutionTask CustomResourceDefinition")
    crd.add_argument("--reference", action="store_true",
                     help="print a Markdown reference of every field instead of the YAML")
    crd.add_argument("--policy", action="store_true", help="print the ExecutionPolicy CRD instead")
    crd.set_defaults(func=_crd)

    operator = sub.add_parser("operator", help="run the Kubernetes operator (kopf)")
    operator.add_argument("--namespace", "-n", action="append", default=[],
                          help="namespace to watch (repeatable; default: all namespaces)")
    operator.add_argument("--liveness", default="http://0.0.0.0:8081/healthz",
                          help="liveness endpoint URL (metrics use EXPBUILD_METRICS_PORT, default 8080)")
    operator.add_argument("--peering", default=None, help="kopf peering name for more than one replica")
    operator.add_argument("--standalone", action="store_true", help="no peering (one replica only)")
    operator.set_defaults(func=_operator)

    reapi = sub.add_parser("reapi-worker", help="serve a Remote Execution API server's queue (e.g. BuildGrid)")
    reapi.add_argument("--server", help="Bots/Execution endpoint, grpc://host:port (default: config server_url)")
    reapi.add_argument("--cas", help="CAS endpoint if different (default: config cas_url, else --server)")
    reapi.add_argument("--instance", help="REAPI instance name (default: config instance_name)")
    reapi.add_argument("--config", type=Path, help="worker TOML file (executors, chain, capacity, isolation floor)")
    reapi.add_argument("--bot-id", default="", help="stable bot id (default: <worker_id>@<hostname>)")
    reapi.add_argument("--cache-dir", type=Path, help="local CAS cache (default: <work_dir>/cas)")
    reapi.add_argument("--cache-size", default="2Gi", help="local CAS cache bound, a quantity (default 2Gi)")
    reapi.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    reapi.set_defaults(func=_reapi_worker)

    agent = sub.add_parser("agent", help="run the node agent (DaemonSet): run tasks placed on this node")
    agent.add_argument("--node", default=os.environ.get("NODE_NAME", ""), help="Kubernetes node name "
                       "(default: $NODE_NAME)")
    agent.add_argument("--config", type=Path, help="worker TOML file (executors, chain, max_concurrent_tasks)")
    agent.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "expbuild-system"),
                       help="namespace of the agents' Leases, the operator's (default: $POD_NAMESPACE)")
    agent.add_argument("--task-namespace", action="append", default=[],
                       help="only run tasks of this namespace (repeatable; default: all)")
    agent.add_argument("--seccomp-dir", type=Path, default=Path("/var/lib/kubelet/seccomp/profiles"),
                       help="where to install the seccomp profiles for the kubelet")
    agent.add_argument("--metrics-port", type=int, default=8081, help="port of /healthz and /metrics (0: none)")
    agent.add_argument("--poll-seconds", type=float, default=30.0,
                       help="resync interval: how often to list placed tasks again besides watching them")
    agent.add_argument("--allow-host-executor", action="store_true",
                       help="offer the host executor (Process isolation, runs on the node itself as runAsUser, "
                            "never root); off unless given, whatever the worker file says")
    agent.add_argument("--weak-isolation-namespace", action="append", default=[], metavar="NAMESPACE",
                       help="let tasks of this namespace ask for isolation.minimum below Container and seccomp "
                            "Unconfined (repeatable; '*': every namespace); elsewhere the floor is Container")
    agent.set_defaults(func=_agent)
    return parser


def _run(args: argparse.Namespace) -> int:
    config = load_worker_config(args.config) if args.config else WorkerConfig()
    task = load_task(args.task)
    choice = args.executor or task.spec.isolation.executor
    chain = build_chain(config, choice)
    progress = _Progress(enabled=sys.stderr.isatty() and args.output == "table")
    status = asyncio.run(_run_with_progress(task, chain, config, args.task.parent, progress))
    _print_status(task.metadata.name, status, args.output)
    if status.phase is Phase.ERROR or status.exit_code is None:
        return EXIT_NOT_RUN
    if status.phase is not Phase.SUCCEEDED and status.exit_code == 0:
        return 1  # e.g. an output was refused: never report success for a task that did not succeed
    return status.exit_code if status.exit_code < 256 else 1


async def _run_with_progress(task, chain, config, base_dir, progress):  # type: ignore[no-untyped-def]
    ticker = asyncio.create_task(progress.tick()) if progress.enabled else None
    try:
        return await run_task(task, chain, config, base_dir=base_dir, on_selected=progress.selected)
    finally:
        if ticker is not None:
            ticker.cancel()
            progress.clear()


class _Progress:
    """A one-line "running on namespace... 12s" on a terminal, erased at the end."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.executor = "?"
        self.started = time.monotonic()

    def selected(self, executor) -> None:  # type: ignore[no-untyped-def]
        self.executor = executor.name
        self.started = time.monotonic()

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(1)
            elapsed = time.monotonic() - self.started
            sys.stderr.write(f"\r\033[Krunning on {self.executor}... {elapsed:.0f}s")
            sys.stderr.flush()

    def clear(self) -> None:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def _print_status(name: str, status: ExecutionTaskStatus, output: str) -> None:
    data = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    if output == "json":
        print(json.dumps({"name": name, "status": data}, indent=2))
        return
    if output == "yaml":
        print(yaml.safe_dump({"name": name, "status": data}, sort_keys=False), end="")
        return
    rows = [("Task", name), ("Phase", status.phase.value), ("Reason", status.reason),
            ("Exit code", "" if status.exit_code is None else str(status.exit_code)),
            ("Executor", status.executor or "-"),
            ("Isolation", status.isolation_level.value if status.isolation_level else "-")]
    if status.duration_seconds is not None:
        rows.append(("Duration", f"{status.duration_seconds:.3f}s"))
    if status.stats:
        if status.stats.cpu_time_seconds is not None:
            rows.append(("CPU time", f"{status.stats.cpu_time_seconds:.3f}s"))
        if status.stats.peak_memory_bytes is not None:
            rows.append(("Peak memory", f"{status.stats.peak_memory_bytes / 2**20:.1f} MiB"))
    if status.message:
        rows.append(("Message", status.message))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key + ':':<{width + 1}} {value}")
    for out in status.outputs:
        flag = " (executable)" if out.executable else ""
        print(f"Output: {out.path}  sha256:{out.sha256}  {out.size_bytes} bytes{flag}")
    if status.logs:
        for label, tail in (("stdout", status.logs.stdout_tail), ("stderr", status.logs.stderr_tail)):
            if tail:
                print(f"--- {label} (tail) ---")
                print(tail, end="" if tail.endswith("\n") else "\n")


def _selftest_epilog() -> str:
    """What each attack needs, and the exit statuses: the --help a user reads before running attacks."""
    width = max(len(attack.key) for attack in ATTACKS)

    def wrap(text: str, indent: str = "", hang: str = "") -> str:
        return textwrap.fill(text, width=100, initial_indent=indent, subsequent_indent=hang)

    lines = [wrap("attacks, and what each needs (/bin/busybox is the sandbox's: the image's for docker and podman, "
                  "the host's for host and namespace):")]
    lines += [wrap(f"{attack.key:<{width}}  {attack.sentence}; needs {attack.needs}", "  ", " " * (width + 4))
              for attack in ATTACKS]
    lines += ["", wrap("An attack a backend's capabilities() do not claim to stop is reported as an expected loss "
                       "(the host executor shares the host's files); a fork bomb is never run without a pids limit."),
              wrap(f"exit status: {selftest_report.EXIT_HELD} every claim held; {selftest_report.EXIT_LOST} a "
                   f"backend lost an attack its capabilities() claim to stop; {selftest_report.EXIT_UNCHECKED} "
                   f"something could not be checked (a positive control failed, an attack crashed, or a backend "
                   f"named with --executor is unavailable); 2 bad arguments or worker file.")]
    return "\n".join(lines)


def _selftest(args: argparse.Namespace) -> int:
    config = load_worker_config(args.config) if args.config else WorkerConfig()
    wanted = set(args.executor or config.executor.backends())
    names = [name for name in LOCAL_BACKENDS if name in wanted]    # the columns of docs/capabilities.md
    attacks = [attack for attack in ATTACKS if not args.attack or attack.key in args.attack]
    progress = _Progress(enabled=sys.stderr.isatty() and args.output == "table")

    def checking(backend: str, attack, number: int) -> None:  # type: ignore[no-untyped-def]
        progress.executor = f"{backend}: {attack.key} ({number}/{len(attacks)})"

    async def check():  # type: ignore[no-untyped-def]
        ticker = asyncio.create_task(progress.tick()) if progress.enabled else None
        try:
            return await check_machine(config, names, attacks, named=bool(args.executor), progress=checking)
        finally:
            if ticker is not None:
                ticker.cancel()
                progress.clear()

    reports = asyncio.run(check())
    render = selftest_report.render_json if args.output == "json" else selftest_report.render_table
    sys.stdout.write(render(reports, attacks))
    return selftest_report.exit_status(reports)


def _crd(args: argparse.Namespace) -> int:
    if args.reference:
        from .api.reference import render_reference
        sys.stdout.write(render_reference())
        return 0
    from .api.crd import render_crd_yaml, render_policy_crd_yaml
    sys.stdout.write(render_policy_crd_yaml() if args.policy else render_crd_yaml())
    return 0


def _operator(args: argparse.Namespace) -> int:
    try:
        from .controller.run import run_operator
    except ImportError as exc:
        raise CliError(f"the operator cannot start: {exc}") from None
    run_operator(args.namespace, liveness=args.liveness, peering=args.peering, standalone=args.standalone)
    return 0


def _agent(args: argparse.Namespace) -> int:
    try:
        from .agent.admission import AgentPolicy
        from .agent.node import AgentSettings
        from .agent.run import run_agent
    except ImportError as exc:
        raise CliError(f"the node agent cannot start: {exc}") from None
    if not args.node:
        raise CliError("agent: no node name: pass --node or set NODE_NAME (downward API spec.nodeName)")
    config = load_worker_config(args.config) if args.config else WorkerConfig()
    run_agent(config, AgentSettings(node=args.node, namespace=args.namespace, task_namespaces=args.task_namespace,
                                    seccomp_dir=args.seccomp_dir, poll_seconds=args.poll_seconds,
                                    allow_host_executor=args.allow_host_executor,
                                    policy=AgentPolicy(frozenset(args.weak_isolation_namespace))),
              metrics_port=args.metrics_port)
    return 0


def _reapi_worker(args: argparse.Namespace) -> int:
    try:
        from .api.quantities import QuantityError, parse_bytes
        from .worker.reapi.worker import ReapiSettings, run_reapi_worker
    except ImportError as exc:
        raise CliError(f"the REAPI worker cannot start: {exc}") from None
    config = load_worker_config(args.config) if args.config else WorkerConfig()
    server = args.server or config.server_url
    if not server:
        raise CliError("reapi-worker: no server: pass --server grpc://host:port or set server_url in the config")
    try:
        cache_bytes = parse_bytes(args.cache_size)
    except QuantityError as exc:
        raise CliError(f"--cache-size: {exc}") from None
    run_reapi_worker(config, ReapiSettings(
        server=server, cas=args.cas or config.cas_url, instance=args.instance if args.instance is not None
        else config.instance_name, bot_id=args.bot_id, cache_dir=args.cache_dir, cache_bytes=cache_bytes,
        metrics_port=args.metrics_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
