"""The selftest's answer: the attack x backend matrix of docs/capabilities.md, the isolation levels each
backend claimed and reached, what went wrong, and the exit status.

Exit status: 0 every claim held; 1 a backend lost an attack its ``capabilities()`` claim to stop (or its
results reported less isolation than it claims); 3 nothing was lost but something could not be checked (a
positive control failed, an attack crashed, or a backend named with ``--executor`` is unavailable).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence

from ..executors import cgroups
from .attack import Attack
from .run import BackendReport, Outcome

EXIT_HELD, EXIT_LOST, EXIT_UNCHECKED = 0, 1, 3


def markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def attack_row_label(attack: Attack) -> str:
    return f"{attack.sentence} (`{attack.key}`)"


def problems(reports: Sequence[BackendReport]) -> tuple[list[str], list[str]]:
    """(losses of a claim, things that could not be checked), one line each."""
    lost, unchecked = [], []
    for report in reports:
        if report.unavailable is not None:
            if report.named:
                unchecked.append(f"{report.name} is unavailable: {report.unavailable}")
            continue
        for key, verdict in report.verdicts.items():
            if verdict.outcome is Outcome.LOST:
                lost.append(f"{report.name} lost {key}, which its capabilities() claim to stop: {verdict.detail}")
            elif verdict.outcome is Outcome.NOT_JUDGED:
                unchecked.append(f"{report.name}: {key} not judged: {verdict.detail}")
        reached, claimed = report.reached_level, report.claimed
        if reached is not None and claimed is not None and reached < claimed:
            lost.append(f"{report.name} claims isolation {claimed.value} but its tasks reported {reached.value}")
    return lost, unchecked


def exit_status(reports: Sequence[BackendReport]) -> int:
    lost, unchecked = problems(reports)
    return EXIT_LOST if lost else EXIT_UNCHECKED if unchecked else EXIT_HELD


def machine() -> str:
    try:
        version = f"cgroup v{cgroups.detect_version()}"
    except (OSError, cgroups.CgroupError) as exc:
        version = f"cgroup version unknown ({exc})"
    return f"Linux {platform.release()}, {version}, running as uid {os.geteuid()}"


def render_table(reports: Sequence[BackendReport], attacks: Sequence[Attack]) -> str:
    names = [r.name for r in reports]
    lines = [f"selftest on {machine()}", "", markdown_row(["Attack", *names]), markdown_row(["---"] * (len(names) + 1))]
    for attack in attacks:
        lines.append(markdown_row([attack_row_label(attack), *(r.verdicts[attack.key].cell for r in reports)]))
    lines += ["", markdown_row(["", *names]), markdown_row(["---"] * (len(names) + 1)),
              markdown_row(["isolation level claimed", *(r.claimed.value if r.claimed else "–" for r in reports)]),
              markdown_row(["isolation level reached", *(_reached(r) for r in reports)]), ""]
    lost, unchecked = problems(reports)
    lines += [f"FAILED: {line}" for line in lost] + [f"NOT CHECKED: {line}" for line in unchecked]
    lines.append(_summary(reports, lost, unchecked))
    return "\n".join(lines) + "\n"


def _reached(report: BackendReport) -> str:
    if report.unavailable is not None:
        return f"– unavailable: {report.unavailable}"
    return report.reached_level.value if report.reached_level else "– no task ran"


def _summary(reports: Sequence[BackendReport], lost: list[str], unchecked: list[str]) -> str:
    counts = {outcome: 0 for outcome in Outcome}
    for report in reports:
        for verdict in report.verdicts.values():
            counts[verdict.outcome] += 1
    parts = [f"{counts[Outcome.HELD]} held", f"{counts[Outcome.EXPECTED_LOSS]} expected losses (not claimed)",
             f"{counts[Outcome.NOT_RUN] + counts[Outcome.REFUSED]} not run or refused"]
    verdict = "FAILED" if lost else "INCOMPLETE" if unchecked else "OK"
    return f"{verdict}: " + ", ".join(parts) + f", {len(lost)} claims lost, {len(unchecked)} not checked"


def render_json(reports: Sequence[BackendReport], attacks: Sequence[Attack]) -> str:
    lost, unchecked = problems(reports)
    body = {
        "machine": machine(),
        "exitStatus": exit_status(reports),
        "failures": lost, "notChecked": unchecked,
        "attacks": [{"key": a.key, "sentence": a.sentence, "needs": a.needs} for a in attacks],
        "backends": [{
            "name": r.name, "available": r.unavailable is None, "reason": r.unavailable,
            "isolationLevel": {"claimed": r.claimed.value if r.claimed else None,
                               "reached": r.reached_level.value if r.reached_level else None},
            "attacks": {key: {"outcome": v.outcome.value, "cell": v.cell, "detail": v.detail,
                              "evidence": v.evidence}
                        for key, v in r.verdicts.items()},
        } for r in reports],
    }
    return json.dumps(body, indent=2, ensure_ascii=False) + "\n"
