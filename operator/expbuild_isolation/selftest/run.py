"""Run the attacks against each backend and judge every outcome against what the backend claims.

A backend is built from the worker configuration as a worker would build it; one that cannot start is
reported with its reason. An attack a backend does not claim to stop (``Attack.unclaimed``) and loses is an
expected loss; one it claims and loses is a failure. A crash or a failed positive control is "not judged",
never a pass.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..api.task import IsolationLevel
from ..executors.base import (ExecutionRequest, ExecutionResult, ExecutorCapabilities, ExecutorError,
                              IsolationUnavailable, TaskExecutor)
from ..worker.chain import build_executor
from ..worker.config import WorkerConfig
from .attack import Attack, AttackSucceeded, ControlFailed


class Outcome(str, enum.Enum):
    HELD = "held"                        # the attack failed
    EXPECTED_LOSS = "expected-loss"      # it got through, and the backend does not claim to stop it
    LOST = "lost"                        # it got through although the backend claims to stop it: a failure
    NOT_RUN = "not-run"                  # not claimed, and running it would harm the machine
    REFUSED = "refused"                  # the backend refused the task up front (a limit it does not claim)
    NOT_JUDGED = "not-judged"            # its positive control failed, or the run crashed
    UNAVAILABLE = "unavailable"          # the backend cannot run anything here


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    detail: str = ""        # why it was expected, not run or refused; the evidence of a loss
    evidence: str = ""      # what the host saw of an expected loss

    @property
    def cell(self) -> str:
        """The cell of the attack x backend matrix, in the words of docs/capabilities.md."""
        return {Outcome.HELD: "✔", Outcome.EXPECTED_LOSS: f"✘ {self.detail}",
                Outcome.LOST: f"✘ LOST, though claimed: {self.detail}",
                Outcome.NOT_RUN: f"– not run: {self.detail}", Outcome.REFUSED: f"– refused up front: {self.detail}",
                Outcome.NOT_JUDGED: f"? not judged: {self.detail}",
                Outcome.UNAVAILABLE: "– unavailable"}[self.outcome]


@dataclass
class BackendReport:
    name: str
    named: bool                                  # asked for on the command line (unavailable is then a problem)
    unavailable: str | None = None               # why it cannot run anything here
    claimed: IsolationLevel | None = None        # capabilities().isolation_level
    reached: set[IsolationLevel] = field(default_factory=set)   # what its results reported
    verdicts: dict[str, Verdict] = field(default_factory=dict)

    @property
    def reached_level(self) -> IsolationLevel | None:
        return min(self.reached) if self.reached else None


class _Observed:
    """The executor under attack, noting the isolation level each of its results reports."""

    def __init__(self, executor: TaskExecutor, report: BackendReport) -> None:
        self.executor, self.report, self.name = executor, report, executor.name

    async def execute(self, request: ExecutionRequest) -> ExecutionResult:
        result = await self.executor.execute(request)
        self.report.reached.add(result.isolation_level)
        return result


Progress = Callable[[str, Attack, int], None]


async def check_backend(name: str, config: WorkerConfig, attacks: Sequence[Attack], *, named: bool = False,
                        progress: Progress | None = None) -> BackendReport:
    report = BackendReport(name, named)
    try:
        executor = build_executor(name, config)  # type: ignore[arg-type]
        await executor.health_check()
        await executor.warmup()
    except Exception as exc:   # a backend that cannot start, or a bug at its start: reported, the others still run
        report.unavailable = str(exc) if isinstance(exc, ExecutorError) else f"{type(exc).__name__}: {exc}"
        report.verdicts = {attack.key: Verdict(Outcome.UNAVAILABLE) for attack in attacks}
        return report
    caps = executor.capabilities()
    report.claimed = caps.isolation_level
    observed = _Observed(executor, report)
    for number, attack in enumerate(attacks, 1):
        if progress is not None:
            progress(name, attack, number)
        report.verdicts[attack.key] = await judge(attack, observed, caps)
    return report


async def judge(attack: Attack, executor: _Observed, caps: ExecutorCapabilities) -> Verdict:
    why_not_claimed = attack.unclaimed(caps)
    if why_not_claimed and attack.harmful_unclaimed:
        return Verdict(Outcome.NOT_RUN, why_not_claimed)
    try:
        await attack.run(executor)
    except IsolationUnavailable as exc:
        return Verdict(Outcome.REFUSED, str(exc).removeprefix(f"{executor.name}: "))
    except AttackSucceeded as exc:
        if why_not_claimed:
            return Verdict(Outcome.EXPECTED_LOSS, why_not_claimed, evidence=str(exc))
        return Verdict(Outcome.LOST, str(exc))
    except ControlFailed as exc:
        return Verdict(Outcome.NOT_JUDGED, f"the positive control failed: {exc}")
    except Exception as exc:   # one attack's crash must not hide the others' verdicts; it is reported
        return Verdict(Outcome.NOT_JUDGED, f"{type(exc).__name__}: {exc}")
    return Verdict(Outcome.HELD, f"held, though its capabilities() do not claim it: {why_not_claimed}"
                   if why_not_claimed else "")


async def check_machine(config: WorkerConfig, names: Sequence[str], attacks: Sequence[Attack], *,
                        named: bool = False, progress: Progress | None = None) -> list[BackendReport]:
    """Every backend in ``names``, one after the other (attacks that time the host must not overlap)."""
    return [await check_backend(name, config, attacks, named=named, progress=progress) for name in names]
