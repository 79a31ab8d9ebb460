"""One REAPI action, start to finish: fetch inputs, run hardened, upload outputs, answer an ActionResult.

Never raises for a problem of the action itself; answers (status, ActionResult)
where status follows the Remote Workers API: OK for any completed command
(a non-zero exit is a normal result), DEADLINE_EXCEEDED after the timeout,
INVALID_ARGUMENT / FAILED_PRECONDITION for actions that cannot run as sent
(no retry; one the worker file's ``[policy]`` or ``[task_limits]`` refuses is
FAILED_PRECONDITION "PolicyViolation: ...", see ``policy.py``), INTERNAL /
UNAVAILABLE for the worker's own trouble (the server retries elsewhere). Input blobs missing from the CAS give FAILED_PRECONDITION
with a PreconditionFailure ``MISSING`` violation per blob: the client uploads
them and retries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from prometheus_client import Counter, Histogram

from ...api.task import IsolationLevel
from ...executors.base import DEFAULT_OUTPUT_LIMIT, ExecutionResult, ExecutorUnavailable, IsolationUnavailable, \
    TaskExecutor, TerminationReason
from ...executors.select import select_executor
from ...executors.workspace import create_workspace, remove_workspace
from ..config import WorkerConfig
from .action import ActionPlan, InvalidAction, lease_task_id, plan_action
from .cas import CasError, LocalCas, MissingBlobs, RemoteCas, digest_of, key, missing_blobs_status
from .policy import ActionRefused, judged
from .protos import any_pb2, code_pb2, re_pb2, status_pb2, timestamp_pb2
from .tree import collect, fetch_directories, input_files, materialize, missing_inputs, \
    prepare_output_parents

LOG = logging.getLogger("expbuild.reapi")
AUDIT = logging.getLogger("expbuild.audit")

_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
ACTIONS = Counter("expbuild_reapi_actions_total", "REAPI actions finished, by outcome.", ["outcome", "executor"])
QUEUE_SECONDS = Histogram("expbuild_reapi_queue_seconds",
                          "Lease received to command started (input fetch and executor selection).",
                          buckets=_SECONDS)
EXECUTION_SECONDS = Histogram("expbuild_reapi_execution_seconds", "Command run time.", ["executor"],
                              buckets=_SECONDS)
CAS_BYTES = Counter("expbuild_reapi_cas_bytes_total", "Bytes moved to and from the server's CAS.", ["direction"])
CACHE_LOOKUPS = Counter("expbuild_reapi_cas_cache_total", "Local CAS cache lookups of input blobs.", ["result"])


@dataclass(frozen=True)
class RunnerSettings:
    bot_id: str
    work_dir: Path
    floor: IsolationLevel
    default_timeout: float = 600.0
    max_timeout: float = 3600.0
    run_as_user: int | None = 65534
    max_output_bytes: int = DEFAULT_OUTPUT_LIMIT
    config: WorkerConfig = field(default_factory=WorkerConfig)   # its [policy] and [task_limits] judge each action


class ActionRunner:
    def __init__(self, settings: RunnerSettings, cas: LocalCas, remote: RemoteCas,
                 chains: dict[str, Sequence[TaskExecutor]]) -> None:
        self.settings, self.cas, self.remote, self.chains = settings, cas, remote, chains

    async def run(self, lease_id: str, action: re_pb2.Action) -> tuple[status_pb2.Status, re_pb2.ActionResult]:
        received = time.monotonic()
        meta = re_pb2.ExecutedActionMetadata(worker=self.settings.bot_id)
        _stamp(meta.worker_start_timestamp)
        workspace = create_workspace(self.settings.work_dir, prefix="reapi-")
        before = (self.remote.bytes_in, self.remote.bytes_out, self.cas.hits, self.cas.misses)
        outcome, executor_name, plan, result, refusal = "error", "-", None, None, None
        try:
            _stamp(meta.input_fetch_start_timestamp)
            plan = await self._prepare(lease_id, action, workspace)
            _stamp(meta.input_fetch_completed_timestamp)
            chain = self.chains.get(plan.executor) or self.chains["auto"]
            executor = await select_executor(chain, plan.request)
            executor_name = executor.name
            QUEUE_SECONDS.observe(time.monotonic() - received)
            _stamp(meta.execution_start_timestamp)
            self._audit("start", lease_id, plan, executor.name, executor.isolation_level().value)
            result = await executor.execute(plan.request)
            _stamp(meta.execution_completed_timestamp)
            EXECUTION_SECONDS.labels(executor=executor.name).observe(result.stats.duration_seconds)
            _stamp(meta.output_upload_start_timestamp)
            action_result = await self._upload(plan, result, workspace)
            _stamp(meta.output_upload_completed_timestamp)
            timed_out = result.reason is TerminationReason.DEADLINE_EXCEEDED
            outcome = "timeout" if timed_out else "success" if result.exit_code == 0 else "nonzero_exit"
            status = status_pb2.Status(code=code_pb2.DEADLINE_EXCEEDED if timed_out else code_pb2.OK,
                                       message=result.message if timed_out else "")
        except InvalidAction as exc:
            outcome, status, action_result = "invalid", _status(code_pb2.INVALID_ARGUMENT, str(exc)), None
        except ActionRefused as exc:   # the worker file's [policy] or [task_limits]: nothing was fetched or run
            plan, refusal = exc.plan, str(exc)
            outcome, status, action_result = "rejected", _status(code_pb2.FAILED_PRECONDITION, refusal), None
        except IsolationUnavailable as exc:
            refusal = f"{exc} ({plan.raised})" if plan is not None and plan.raised else str(exc)
            outcome, status, action_result = "rejected", _status(code_pb2.FAILED_PRECONDITION, refusal), None
        except MissingBlobs as exc:
            outcome, status, action_result = "cas_error", missing_blobs_status(exc.digests), None
        except CasError as exc:
            outcome, status, action_result = "cas_error", _status(exc.code, str(exc)), None
        except ExecutorUnavailable as exc:
            outcome, status, action_result = "unavailable", _status(code_pb2.UNAVAILABLE, str(exc)), None
        except asyncio.CancelledError:
            outcome, status, action_result = "cancelled", _status(code_pb2.CANCELLED, "cancelled"), None
            raise
        except Exception as exc:  # noqa: BLE001 - the worker's own bug must not kill the bot: INTERNAL retries
            LOG.exception("action %s failed inside the worker", lease_id)
            outcome, status, action_result = "error", _status(code_pb2.INTERNAL, f"worker error: {exc!r}"), None
        finally:
            ACTIONS.labels(outcome=outcome, executor=executor_name).inc()
            self._count_traffic(before)
            self._audit("end", lease_id, plan, executor_name, result.isolation_level.value if result else "-",
                        outcome=outcome, result=result, refusal=refusal, worker_seconds=time.monotonic() - received)
            await asyncio.shield(asyncio.to_thread(remove_workspace, workspace))
        action_result = action_result or re_pb2.ActionResult()
        _stamp(meta.worker_completed_timestamp)
        if result is not None:
            meta.auxiliary_metadata.append(_stats_any(result))
        action_result.execution_metadata.CopyFrom(meta)
        return status, action_result

    async def _prepare(self, lease_id: str, action: re_pb2.Action, workspace: Path) -> ActionPlan:
        try:
            return await self._fetch_inputs(lease_id, action, workspace)
        except MissingBlobs:
            # the fetch stops at the first level with a hole: survey the whole action for the client
            missing = await missing_inputs(self.cas, action.command_digest, action.input_root_digest)
            if not missing:
                raise CasError("input blobs were missing during the fetch but are all present now") from None
            raise MissingBlobs(missing) from None

    async def _fetch_inputs(self, lease_id: str, action: re_pb2.Action, workspace: Path) -> ActionPlan:
        with self.cas.pinned([action.command_digest]):
            await self.cas.ensure([action.command_digest])
            command = re_pb2.Command()
            command.ParseFromString(self.cas.read(action.command_digest))
        plan = plan_action(action, command, workspace, task_id=lease_task_id(lease_id), floor=self.settings.floor,
                           default_timeout=self.settings.default_timeout, max_timeout=self.settings.max_timeout,
                           run_as_user=self.settings.run_as_user, max_output_bytes=self.settings.max_output_bytes)
        plan = judged(plan, self.settings.config)   # before any input is fetched: a refused action costs nothing
        directories = await fetch_directories(self.cas, action.input_root_digest)
        blobs = input_files(directories)
        with self.cas.pinned(blobs):
            await self.cas.ensure(blobs)
            await asyncio.to_thread(materialize, self.cas, directories, action.input_root_digest, workspace)
        await asyncio.to_thread(prepare_output_parents, workspace,
                                list(plan.output_files + plan.output_directories + plan.output_paths))
        return plan

    async def _upload(self, plan: ActionPlan, result: ExecutionResult, workspace: Path) -> re_pb2.ActionResult:
        outputs = await asyncio.to_thread(collect, workspace, files=plan.output_files,
                                          directories=plan.output_directories, paths=plan.output_paths,
                                          prefix=plan.output_prefix, limit=plan.request.output_limit_bytes)
        action_result = re_pb2.ActionResult(exit_code=result.exit_code)
        outputs.fill(action_result, v21=bool(plan.output_paths))
        stderr = result.stderr
        notes = list(outputs.problems) + ([result.message] if result.message else [])
        if result.stderr_truncated:
            notes.append(f"stderr truncated at {plan.request.log_limit_bytes} bytes")
        if notes and result.exit_code != 0 or outputs.problems:
            stderr += "".join(f"\n[expbuild-isolation] {note}" for note in notes).encode() + b"\n"
        for stream, data in (("stdout", result.stdout), ("stderr", stderr)):
            digest = digest_of(data)
            outputs.blobs[key(digest)] = (digest, data)
            getattr(action_result, f"{stream}_digest").CopyFrom(digest)
        await self.remote.upload(outputs.blobs)
        for digest, source in outputs.blobs.values():  # a consumer on this worker then finds them locally
            if isinstance(source, Path):
                await asyncio.to_thread(self.cas.put_file, digest, source)
            elif not self.cas.has(digest):
                self.cas.put(digest, source)
        return action_result

    def _count_traffic(self, before: tuple[int, int, int, int]) -> None:
        CAS_BYTES.labels(direction="in").inc(self.remote.bytes_in - before[0])
        CAS_BYTES.labels(direction="out").inc(self.remote.bytes_out - before[1])
        CACHE_LOOKUPS.labels(result="hit").inc(self.cas.hits - before[2])
        CACHE_LOOKUPS.labels(result="miss").inc(self.cas.misses - before[3])

    def _audit(self, event: str, lease_id: str, plan: ActionPlan | None, executor: str, isolation: str, *,
               outcome: str | None = None, result: ExecutionResult | None = None, refusal: str | None = None,
               worker_seconds: float | None = None) -> None:
        record: dict = {"time": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"), "event": event,
                        "source": "reapi", "lease": lease_id, "bot": self.settings.bot_id,
                        "executor": executor, "isolation": isolation}
        if plan is not None:
            limits = plan.request.limits
            record.update(argv=list(plan.request.argv), image=plan.request.image,
                          minimum=plan.request.minimum_isolation.value, network=limits.network.mode.value,
                          limits={k: v for k, v in (("cpu", limits.cpu_cores), ("memory", limits.memory_bytes),
                                                    ("disk", limits.disk_bytes), ("pids", limits.max_processes))
                                  if v is not None})
        if outcome is not None:
            record["outcome"] = {"result": outcome, **({"exitCode": result.exit_code, "reason": result.reason.value,
                                                        "durationSeconds": round(result.stats.duration_seconds, 4)}
                                                       if result else {}),
                                 **({"message": refusal} if refusal else {})}
            record["workerSeconds"] = round(worker_seconds or 0.0, 4)   # lease received to result ready
        AUDIT.info(json.dumps(record, sort_keys=True, separators=(",", ":"), default=str))


def _stamp(field: timestamp_pb2.Timestamp) -> None:
    field.GetCurrentTime()


def _status(code: int, message: str) -> status_pb2.Status:
    return status_pb2.Status(code=code, message=message)


def _stats_any(result: ExecutionResult) -> any_pb2.Any:
    """Our stats as a google.protobuf.Struct in ExecutedActionMetadata.auxiliary_metadata."""
    from google.protobuf import struct_pb2
    stats = result.stats
    values = {"executor": result.executor, "isolationLevel": result.isolation_level.value,
              "reason": result.reason.value, "durationSeconds": stats.duration_seconds,
              "cpuTimeSeconds": stats.cpu_time_seconds, "peakMemoryBytes": stats.peak_memory_bytes,
              "diskReadBytes": stats.disk_read_bytes, "diskWriteBytes": stats.disk_write_bytes}
    struct = struct_pb2.Struct()
    struct.update({k: v for k, v in values.items() if v is not None})
    packed = any_pb2.Any()
    packed.Pack(struct)
    return packed
