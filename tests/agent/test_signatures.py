"""The node agent verifies image signatures before it runs a claimed task.

The tasks are placed as the operator would have placed them before a verifying ExecutionPolicy existed (no
operator runs), so only the agent stands between them and the node. Judged from the host: the real
namespace executor is asked to run the signed task only, and only that task's command leaves its output.
"""

from __future__ import annotations

from pathlib import Path

from tests.controller.conftest import POLICIES, TASKS, eventually
from tests.unit.signature_cases import Publisher, cases, verifying

from .conftest import needs_root, running_agent
from .test_policy import BIG_NODE, _ended, marking_task, policy

pytestmark = needs_root
TRUSTED, OTHER = Publisher("ci-release"), Publisher("someone-else")
CASES = cases("registry.local/ci/app", "sha256:" + "9d" * 32, TRUSTED, OTHER)


def signed_task(case: str) -> dict:
    body = marking_task(case, Path("out.txt"), {"image": CASES[case].image})
    body["metadata"]["annotations"] = CASES[case].annotations
    return body


async def test_the_agent_runs_only_the_image_signed_by_a_trusted_publisher(api, kmock, worker_config, counting):
    await api.create(POLICIES, policy("signed-images", **verifying(TRUSTED)))
    for case in CASES:
        await api.create(TASKS, signed_task(case))
    async with running_agent(kmock, worker_config, "n1", counting=counting, capacity=BIG_NODE):
        ended = {case: await eventually(lambda case=case: _ended(api, case), timeout=60, what=f"{case} to end")
                 for case in CASES}
    signed = ended.pop("signed")["status"]
    assert signed["phase"] == "Succeeded", signed
    assert [o["path"] for o in signed["outputs"]] == ["out.txt"]  # its command really ran
    for case, done in ended.items():
        status = done["status"]
        assert (status["phase"], status["reason"]) == ("Error", "UntrustedImage"), (case, status)
        assert "is not trusted by ExecutionPolicy signed-images" in status["message"]
        assert all(words in status["message"] for words in CASES[case].words), (case, status["message"])
        assert not status.get("outputs")
    assert len(counting.runs) == 1, f"the executor was asked to run {counting.runs}"
