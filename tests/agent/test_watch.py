"""The agent watches for the tasks placed on its node; the resync listing is only its safety net."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from expbuild_isolation.agent.api import AgentApi, ApiError
from tests.controller.conftest import TASKS, eventually

from .conftest import needs_root, running_agent
from .test_agent import _phase, placed, sh

RESYNC = 30.0  # far longer than any wait below: what happens in time is the watch's doing


class WatchDownApi(AgentApi):
    """An API whose first task watch ends as told once ``end`` is set, and whose later watches stay silent.

    So a task created while the first watch is down reaches the agent only by the listing that follows it.
    """

    failure: BaseException | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.watches: list[str] = []
        self.end = asyncio.Event()

    async def watch(self, path: str, labels: dict[str, str], version: str, **kwargs: Any) -> Any:
        self.watches.append(version)
        if len(self.watches) == 1:
            await self.end.wait()
            if self.failure is not None:
                raise self.failure
            return
        await asyncio.Event().wait()
        yield {}  # pragma: no cover  (an async generator that never yields)


@needs_root
async def test_a_task_placed_on_the_node_starts_well_within_the_resync_interval(api, kmock, worker_config,
                                                                                 counting):
    async with running_agent(kmock, worker_config, "n1", counting=counting, poll_seconds=RESYNC):
        await asyncio.sleep(0.5)  # the agent's first listing is behind it
        started = time.monotonic()
        await api.create(TASKS, placed("quick", "n1", **sh("sleep 10")))
        await eventually(lambda: _phase(api, "quick", "Running"), timeout=3, what="Running within 3 s")
        assert time.monotonic() - started < 3
        await api.create(TASKS, placed("elsewhere", "n2", **sh("echo no")))
        await api.create(TASKS, placed("second", "n1", **sh("echo yes")))
        await eventually(lambda: _phase(api, "second", "Succeeded"), timeout=3, what="Succeeded within 3 s")
    assert sorted(counting.runs) == ["uid-quick", "uid-second"]  # not the task placed on n2
    assert (await api.get(f"{TASKS}/elsewhere"))["status"]["phase"] == "Scheduled"


@needs_root
async def test_a_task_waiting_for_a_slot_starts_when_one_frees_not_at_the_next_resync(api, kmock, worker_config,
                                                                                      counting):
    worker_config.max_concurrent_tasks = 1
    async with running_agent(kmock, worker_config, "n1", counting=counting, poll_seconds=RESYNC):
        for name in ("first", "then"):
            await api.create(TASKS, placed(name, "n1", **sh("sleep 0.5")))
        for name in ("first", "then"):
            await eventually(lambda name=name: _phase(api, name, "Succeeded"), timeout=5, what=f"{name} Succeeded")
    assert sorted(counting.runs) == ["uid-first", "uid-then"]


@needs_root
@pytest.mark.parametrize("ending", [
    pytest.param(ApiError(410, "too old resource version"), id="410 Gone"),
    pytest.param(ApiError(500, "etcdserver: request timed out"), id="an error"),
    pytest.param(ConnectionResetError("connection reset by peer"), id="a dropped connection"),
    pytest.param(None, id="the server's timeoutSeconds"),
])
async def test_a_watch_that_ends_is_followed_by_a_listing_that_finds_what_it_missed(api, kmock, worker_config,
                                                                                    counting, ending):
    class Api(WatchDownApi):
        failure = ending

    async with running_agent(kmock, worker_config, "n1", counting=counting, poll_seconds=RESYNC,
                             api_class=Api) as agent:
        watching: Any = agent.api
        await eventually(lambda: len(watching.watches) == 1, timeout=3, what="the first watch")
        await api.create(TASKS, placed("missed", "n1", **sh("sleep 10")))
        await asyncio.sleep(0.5)
        assert (await api.get(f"{TASKS}/missed"))["status"]["phase"] == "Scheduled"  # nobody saw it yet
        watching.end.set()
        await eventually(lambda: _phase(api, "missed", "Running"), timeout=3, what="Running after the relist")
        assert len(watching.watches) == 2  # and watching again
    assert counting.runs == ["uid-missed"]



@needs_root
async def test_stopping_the_agent_ends_its_watch_at_once(api, kmock, worker_config, counting):
    async with running_agent(kmock, worker_config, "n1", counting=counting, poll_seconds=RESYNC):
        await eventually(lambda: any(r.params.get("watch") == "true" for r in list(kmock)), timeout=3,
                         what="the agent to watch")
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 1


async def test_the_watch_stream_yields_this_nodes_events_and_raises_410_gone(kmock):
    """Against a stream served as the API server writes it: one JSON event per line, ending in an ERROR."""
    mine, theirs = placed("mine", "n1"), placed("theirs", "n2")
    mine["status"]["logs"] = {"stdoutTail": "x" * 300_000}  # longer than aiohttp's line limit
    gone = {"kind": "Status", "status": "Failure", "reason": "Expired", "code": 410,
            "message": "too old resource version: 5 (42)"}
    kmock["get"][f"{TASKS}"][{"watch": "true"}] << (
        {"type": "ADDED", "object": mine}, {"type": "ADDED", "object": theirs},
        {"type": "MODIFIED", "object": mine}, {"type": "ERROR", "object": gone})
    api = AgentApi(str(kmock.url))
    seen = []
    try:
        with pytest.raises(ApiError) as raised:
            async for event in api.watch(TASKS, {"expbuild.io/node": "n1"}, "5", timeout_seconds=10):
                seen.append((event["type"], event["object"]["metadata"]["name"]))
    finally:
        await api.close()
    assert seen == [("ADDED", "mine"), ("MODIFIED", "mine")]
    assert raised.value.status == 410 and "too old" in str(raised.value)
    request = [r for r in list(kmock) if r.params.get("watch") == "true"][0]
    assert dict(request.params) == {"watch": "true", "labelSelector": "expbuild.io/node=n1",
                                    "timeoutSeconds": "10", "resourceVersion": "5"}
