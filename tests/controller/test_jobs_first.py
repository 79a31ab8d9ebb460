"""In a burst, a task's Job goes before other tasks' Scheduled status patches (``state.JobsFirst``)."""

from __future__ import annotations

import asyncio
import time

from expbuild_isolation.controller.state import JobsFirst

from .conftest import JOBS, TASKS, eventually, task_body
from .test_operator import _phase


async def test_nothing_starting_means_no_wait():
    first = JobsFirst(patience=5)
    began = time.monotonic()
    await first.wait_turn()
    assert time.monotonic() - began < 0.05


async def test_the_wait_ends_when_the_last_starting_task_reaches_its_job():
    first = JobsFirst(patience=5)
    with first.starting() as reached_a, first.starting():
        waiter = asyncio.create_task(first.wait_turn())
        reached_a()
        reached_a()  # (a second call changes nothing)
        await asyncio.sleep(0.05)
        assert not waiter.done() and first.count == 1  # one task is still before its Job
    await asyncio.wait_for(waiter, 1)  # the block ended: it left too
    assert first.count == 0


async def test_the_wait_is_bounded_by_patience():
    first = JobsFirst(patience=0.1)
    with first.starting():
        began = time.monotonic()
        await first.wait_turn()
        assert 0.09 < time.monotonic() - began < 1


async def test_a_status_patch_waits_while_another_tasks_job_is_still_to_be_created(kmock, api, operator):
    times: dict[str, float] = {}

    async def jobs(request):
        name = request.data["metadata"]["name"]
        times[f"sent {name}"] = time.monotonic()
        if name == "xt-slow":
            await asyncio.sleep(1.0)  # the API server is slow to create this one: its task is still starting
        times[f"job {name}"] = time.monotonic()
        # (nothing returned: the request goes on to the emulator's store, which answers it)

    def status(request):
        times.setdefault(f"status {request.url.path.split('/')[-2]}", time.monotonic())

    kmock["post", JOBS] << jobs
    kmock["patch", f"{TASKS}/quick/status"] << status
    kmock["patch", f"{TASKS}/slow/status"] << status
    await api.create(TASKS, task_body("slow"))
    await eventually(lambda: "sent xt-slow" in times, what="the slow Job's POST")
    await api.create(TASKS, task_body("quick"))
    for name in ("quick", "slow"):
        await eventually(lambda name=name: _phase(api, name, "Scheduled"), what=f"{name} Scheduled")
    # Positive control: quick's Job was created while slow's was still on its way, so its status could have
    # been patched at once; it was patched only once slow had its Job.
    assert times["job xt-quick"] < times["job xt-slow"]
    assert times["status quick"] >= times["job xt-slow"]
    assert times["status slow"] >= times["job xt-slow"]


async def test_with_nothing_else_starting_the_status_follows_the_job_at_once(kmock, api, operator):
    times: dict[str, float] = {}

    def job(request):
        times["job"] = time.monotonic()

    def status(request):
        times.setdefault("status", time.monotonic())

    kmock["post", JOBS] << job
    kmock["patch", f"{TASKS}/alone/status"] << status
    await api.create(TASKS, task_body("alone"))
    await eventually(lambda: _phase(api, "alone", "Scheduled"), what="Scheduled")
    assert times["status"] - times["job"] < 0.5
