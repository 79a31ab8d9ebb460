"""Benchmark: 50 trivial actions through Bazel -> BuildGrid -> our REAPI worker, beside Bazel's local sandboxes.

    python3 tests/bench/bench_reapi.py [--actions 50] [--runs 3] [--jobs 4]

Prints JSON: for each strategy the median wall time of a clean ``bazel build``
of N genrules (the Bazel server and analysis are warm; every action executes:
``bazel clean`` before each run and, remotely, --noremote_accept_cached),
per-action time, and for the remote path the worker's own view (command run
time vs. the rest: input fetch, executor selection, output upload).
Needs what tests/reapi needs (bash .ci/setup-reapi.sh) and root.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.reapi.stack import ReapiStack, missing_tools  # noqa: E402


def write_workspace(path: Path, actions: int) -> None:
    path.mkdir(parents=True)
    (path / "WORKSPACE").write_text('workspace(name = "bench")\n')
    rules = [f'genrule(name = "a{i}", outs = ["a{i}.txt"], cmd = "echo {i} > $@")' for i in range(actions)]
    (path / "BUILD").write_text("\n".join(rules) + "\n")


def timed_build(stack: ReapiStack, workspace: Path, *, remote: bool, strategy: str, jobs: int,
                actions: int) -> float:
    assert stack.bazel(workspace, "clean", remote=False).returncode == 0
    extra = [f"--jobs={jobs}"]
    if remote:
        extra.append("--noremote_accept_cached")
    else:
        extra += [f"--spawn_strategy={strategy}", f"--genrule_strategy={strategy}"]
    started = time.monotonic()
    result = stack.bazel(workspace, "build", "//...", remote=remote, extra=tuple(extra), timeout=600)
    elapsed = time.monotonic() - started
    if result.returncode != 0 or (remote and f"{actions} remote" not in result.stderr):
        raise RuntimeError(f"{strategy} build failed or did not execute every action:\n{result.stderr[-3000:]}")
    return elapsed


def worker_view(stack: ReapiStack) -> dict:
    ends = [json.loads(line.split("expbuild.audit INFO ", 1)[1]) for line in stack.worker_log().splitlines()
            if "expbuild.audit INFO " in line and '"event":"end"' in line]
    runs = [e["outcome"].get("durationSeconds", 0.0) for e in ends]
    totals = [e.get("workerSeconds", 0.0) for e in ends]
    return {"actions_executed": len(ends),
            "command_seconds_median": round(statistics.median(runs), 4) if runs else None,
            "in_worker_seconds_median": round(statistics.median(totals), 4) if totals else None}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--actions", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--executor", default="namespace")
    args = parser.parse_args()
    if missing := missing_tools():
        print(json.dumps({"skipped": "; ".join(missing)}))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-reapi-") as tmp:
        root = Path(tmp)
        with ReapiStack(root, capacity=args.jobs) as stack:
            stack.start_worker(args.executor)
            workspace = root / "ws"
            write_workspace(workspace, args.actions)
            # warm the Bazel server, analysis and the worker's executor (not timed)
            assert stack.bazel(workspace, "build", "//...", remote=False,
                               extra=("--spawn_strategy=local",)).returncode == 0
            results = {}
            for name, remote, strategy in (("remote_worker_" + args.executor, True, "remote"),
                                           ("local_linux_sandbox", False, "linux-sandbox"),
                                           ("local_processwrapper_sandbox", False, "processwrapper-sandbox"),
                                           ("local_unsandboxed", False, "local")):
                try:
                    timed_build(stack, workspace, remote=remote, strategy=strategy, jobs=args.jobs,
                                actions=args.actions)  # warm-up run of this strategy
                    times = [timed_build(stack, workspace, remote=remote, strategy=strategy, jobs=args.jobs,
                                         actions=args.actions) for _ in range(args.runs)]
                except RuntimeError as exc:
                    results[name] = {"error": str(exc)[-500:]}
                    continue
                median = statistics.median(times)
                results[name] = {"build_seconds_median": round(median, 3), "build_seconds": [round(t, 3) for t in times],
                                 "per_action_ms": round(1000 * median / args.actions, 1)}
            remote_key = "remote_worker_" + args.executor
            results[remote_key]["worker"] = worker_view(stack)
            if "build_seconds_median" in results.get("local_linux_sandbox", {}):
                extra = results[remote_key]["build_seconds_median"] - results["local_linux_sandbox"]["build_seconds_median"]
                results[remote_key]["overhead_vs_linux_sandbox_per_action_ms"] = round(1000 * extra / args.actions, 1)
            print(json.dumps({"actions": args.actions, "jobs": args.jobs, "worker_capacity": args.jobs,
                              "runs": args.runs, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
