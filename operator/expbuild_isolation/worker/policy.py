"""The worker file's ``[policy]``: the same knobs as an ExecutionPolicy, for every task this worker runs.

``expbuild-isolation run`` and the node agent (both through ``local.run_task``) judge each task against it
with ``api.judge`` before anything is placed in a workspace: a violation ends the task in
Error/PolicyViolation (``run`` exits 125), a ``below_minimum = "Raise"`` floor raises the task's minimum.
The REAPI worker does not read it yet (its actions are not ExecutionTasks).
"""

from __future__ import annotations

import dataclasses

from ..api.judge import Judgement, judge
from ..api.task import ExecutionTask
from .config import WorkerConfig

NAME = "[policy]"
BY = "the worker config's"


def local_judgement(task: ExecutionTask, config: WorkerConfig) -> Judgement | None:
    """The judgement of the worker file's ``[policy]``, or None when it has none."""
    if config.policy is None:
        return None
    verdict = judge(task, [config.policy.as_policy(NAME)], {})
    return dataclasses.replace(verdict, by=BY,
                               violations=tuple(dataclasses.replace(v, by=BY) for v in verdict.violations))
