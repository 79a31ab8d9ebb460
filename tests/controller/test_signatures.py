"""The operator verifies image signatures before it creates anything: Error/UntrustedImage, a Warning Event,
and no Job for an image not signed by a publisher the ExecutionPolicy trusts; the signed task gets its Job."""

from __future__ import annotations

from tests.unit.signature_cases import Publisher, cases, verifying

from .conftest import JOBS, POLICIES, TASKS, eventually, running_operator, task_body
from .test_policy import policy, status_of, warnings_about

TRUSTED, OTHER = Publisher("ci-release"), Publisher("someone-else")
CASES = cases("registry.local/ci/app", "sha256:" + "7c" * 32, TRUSTED, OTHER)


def signed_task(name: str, case: str) -> dict:
    body = task_body(name, image=CASES[case].image)
    body["metadata"]["annotations"] = CASES[case].annotations
    return body


async def test_only_the_image_signed_by_a_trusted_publisher_gets_a_job(api, kmock, operator_config):
    await api.create(POLICIES, policy("signed-images", **verifying(TRUSTED)))
    async with running_operator(kmock, operator_config):
        for case in CASES:
            await api.create(TASKS, signed_task(case, case))
        done = await eventually(lambda: status_of(api, "ci", "signed", "Scheduled", "Error"), what="signed")
        assert done["status"]["phase"] == "Scheduled", done["status"]
        assert await api.get(f"{JOBS}/xt-signed") is not None
        for case in (c for c in CASES if c != "signed"):
            done = await eventually(lambda case=case: status_of(api, "ci", case, "Error", "Scheduled"), what=case)
            status = done["status"]
            assert (status["phase"], status["reason"]) == ("Error", "UntrustedImage"), (case, status)
            assert status["message"].startswith(f"spec.image: {CASES[case].image!r} is not trusted by "
                                                f"ExecutionPolicy signed-images (")
            assert all(words in status["message"] for words in CASES[case].words), (case, status["message"])
            events = await eventually(lambda case=case: warnings_about(api, case, "UntrustedImage"), what="Event")
            assert any("ExecutionPolicy signed-images" in message for message in events)
            assert await api.get(f"{JOBS}/xt-{case}") is None, f"{case}: a Job was created for an untrusted image"


async def test_the_same_unsigned_task_gets_its_job_where_no_policy_verifies(api, kmock, operator_config):
    await api.create(POLICIES, policy("pinned-only", images={"requireDigest": True}))
    async with running_operator(kmock, operator_config):
        await api.create(TASKS, signed_task("unsigned", "unsigned"))
        done = await eventually(lambda: status_of(api, "ci", "unsigned", "Scheduled", "Error"), what="unsigned")
    assert done["status"]["phase"] == "Scheduled", done["status"]
    assert await api.get(f"{JOBS}/xt-unsigned") is not None
