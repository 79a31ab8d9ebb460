"""The REAPI worker's pure parts: Action/Command -> ExecutionRequest, output trees, the local CAS cache."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path

import pytest

try:
    from expbuild_isolation.worker.reapi import protos as reapi_protos
except ImportError as exc:
    if os.environ.get("EXPBUILD_REQUIRE_REAPI") == "1":
        raise
    pytest.skip(f"REAPI protos not installed ({exc}); run .ci/setup-reapi.sh", allow_module_level=True)
from expbuild_isolation.api.task import IsolationLevel, NetworkMode  # noqa: E402
from expbuild_isolation.worker.reapi.action import InvalidAction, lease_task_id, plan_action  # noqa: E402
from expbuild_isolation.worker.reapi.cas import LocalCas, digest_of, key  # noqa: E402
from expbuild_isolation.worker.reapi.cas import CasError  # noqa: E402
from expbuild_isolation.worker.reapi.policy import judged  # noqa: E402
from expbuild_isolation.worker.config import WorkerConfig  # noqa: E402
from expbuild_isolation.worker.reapi.tree import collect, materialize, prepare_output_parents  # noqa: E402

re_pb2 = reapi_protos.re_pb2


def command(**fields) -> re_pb2.Command:
    props = fields.pop("platform", {})
    cmd = re_pb2.Command(arguments=fields.pop("arguments", ["/bin/sh", "-c", "true"]), **fields)
    for name, value in props.items():
        cmd.platform.properties.add(name=name, value=value)
    return cmd


def plan(cmd: re_pb2.Command, action: re_pb2.Action | None = None, floor=IsolationLevel.CONTAINER):
    return plan_action(action or re_pb2.Action(), cmd, Path("/ws"), task_id="t", floor=floor)


# -- Action/Command -> ExecutionRequest -----------------------------------------------------------------------


def test_argv_env_workdir_and_outputs_map_onto_the_request():
    cmd = command(arguments=["gcc", "-c", "a.c"], working_directory="src",
                  environment_variables=[re_pb2.Command.EnvironmentVariable(name="CC", value="gcc")],
                  output_files=["out/a.o"], output_directories=["gen"])
    action = re_pb2.Action()
    action.timeout.seconds = 42
    result = plan(cmd, action)
    request = result.request
    assert request.argv == ("gcc", "-c", "a.c") and request.env == {"CC": "gcc"}
    assert request.working_dir == "src" and request.timeout_seconds == 42
    assert result.output_files == ("src/out/a.o",) and result.output_directories == ("src/gen",)
    assert request.output_paths == ("src/out/a.o", "src/gen") and result.output_prefix == "src"
    assert request.minimum_isolation is IsolationLevel.CONTAINER and request.run_as_user == 65534
    assert request.limits.network.mode is NetworkMode.NONE


def test_v21_output_paths_win_over_files_and_directories():
    result = plan(command(output_paths=["a", "b/c"], output_files=["ignored"]))
    assert result.output_paths == ("a", "b/c") and result.output_files == ()


def test_platform_properties_become_limits_image_network_and_executor():
    cmd = command(platform={"cpu": "500m", "memory": "256Mi", "pids": "64", "network": "localhost",
                            "container-image": "docker://localhost/img:1", "executor": "docker", "OSFamily": "linux",
                            "somethingElse": "ignored"})
    result = plan(cmd)
    limits = result.request.limits
    assert (limits.cpu_cores, limits.memory_bytes, limits.max_processes) == (0.5, 256 << 20, 64)
    assert limits.network.mode is NetworkMode.LOCALHOST
    assert result.request.image == "localhost/img:1" and result.executor == "docker"


def test_action_platform_overrides_command_platform():
    action = re_pb2.Action()
    action.platform.properties.add(name="memory", value="1Gi")
    assert plan(command(platform={"memory": "256Mi"}), action).request.limits.memory_bytes == 1 << 30


def test_an_action_never_gets_less_isolation_than_the_worker_floor():
    assert plan(command(platform={"isolation": "None"})).request.minimum_isolation is IsolationLevel.CONTAINER
    assert plan(command(platform={"isolation": "VM"})).request.minimum_isolation is IsolationLevel.VM
    assert plan(command(platform={"isolation": "Process"}),
                floor=IsolationLevel.NONE).request.minimum_isolation is IsolationLevel.PROCESS


@pytest.mark.parametrize(("cmd", "message"), [
    (command(platform={"memory": "2GB"}), "memory"),
    (command(platform={"network": "internet"}), "network"),
    (command(platform={"executor": "vm"}), "executor"),
    (command(platform={"isolation": "Strong"}), "isolation"),
    (command(platform={"seccomp": "Unconfined"}), "Unconfined"),
    (command(output_files=["../escape"]), "output_files"),
    (command(output_files=["/etc/passwd"]), "absolute"),
    (command(working_directory="../up"), "working_directory"),
    (command(arguments=[]), "arguments"),
])
def test_an_action_that_cannot_run_as_sent_is_refused_with_the_field_named(cmd, message):
    with pytest.raises(InvalidAction, match=message):
        plan(cmd)


def test_lease_ids_become_names_a_cgroup_accepts():
    assert lease_task_id("Main/3F2A-uuid_x") == "reapi-main-3f2a-uuid-x"
    assert len(lease_task_id("x" * 200)) <= 60


# -- outputs ---------------------------------------------------------------------------------------------------


def test_output_files_directories_and_symlinks_follow_the_reapi_rules(tmp_path):
    (tmp_path / "w" / "out" / "d" / "sub").mkdir(parents=True)
    (tmp_path / "w" / "out" / "f.txt").write_text("file")
    tool = tmp_path / "w" / "out" / "d" / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    (tmp_path / "w" / "out" / "d" / "sub" / "x").write_text("x")
    os.symlink("/etc/passwd", tmp_path / "w" / "out" / "d" / "evil")      # inside a dir: reported, not followed
    os.symlink("/etc/shadow", tmp_path / "w" / "out" / "link")             # as a file output: reported as a symlink
    got = collect(tmp_path / "w", files=("out/f.txt", "out/link", "out/missing"), directories=("out/d",),
                  prefix="out")
    assert [(f.path, f.digest.hash) for f in got.files] == [("f.txt", hashlib.sha256(b"file").hexdigest())]
    assert [(s.path, s.target) for s in got.file_symlinks] == [("link", "/etc/shadow")]
    [directory] = got.directories
    assert directory.path == "d"
    tree = re_pb2.Tree()
    tree.ParseFromString(got.blobs[key(directory.tree_digest)][1])
    assert [f.name for f in tree.root.files] == ["tool"] and tree.root.files[0].is_executable
    assert [(s.name, s.target) for s in tree.root.symlinks] == [("evil", "/etc/passwd")]
    assert [d.name for d in tree.root.directories] == ["sub"]
    [child] = tree.children
    assert digest_of(child.SerializeToString(deterministic=True)) == tree.root.directories[0].digest
    assert b"root:" not in b"".join(v[1] for v in got.blobs.values() if isinstance(v[1], bytes))
    assert got.problems == []


def test_an_output_reached_through_a_symlinked_parent_is_not_collected(tmp_path):
    (tmp_path / "w").mkdir()
    os.symlink("/etc", tmp_path / "w" / "out")
    got = collect(tmp_path / "w", files=("out/passwd",), directories=("out",))
    assert got.files == [] and [s.target for s in got.directory_symlinks] == ["/etc"]


def test_a_file_declared_as_a_directory_is_a_problem_not_an_upload(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "gen").write_text("not a dir")
    got = collect(tmp_path / "w", directories=("gen",))
    assert got.directories == [] and "declared as a directory" in got.problems[0]


def test_outputs_past_the_bound_are_problems_not_uploads_and_holes_count(tmp_path):
    (tmp_path / "w" / "gen").mkdir(parents=True)
    (tmp_path / "w" / "small").write_bytes(b"s" * 1000)
    with open(tmp_path / "w" / "gen" / "holes", "wb") as handle:
        handle.truncate(64 << 30)                                       # 64 GiB of holes, no blocks
    with open(tmp_path / "w" / "huge", "wb") as handle:
        handle.truncate(64 << 30)
    got = collect(tmp_path / "w", files=("small", "huge"), directories=("gen",), limit=1 << 20)
    assert [f.path for f in got.files] == ["small"] and got.directories == []
    assert len(got.problems) == 2 and all("max_output_bytes" in p for p in got.problems)
    assert "'huge'" in got.problems[0] and "'gen/holes'" in got.problems[1]
    assert all(isinstance(source, bytes) for _, source in got.blobs.values())


def test_the_worker_config_bound_reaches_the_plan():
    assert plan_action(re_pb2.Action(), command(), Path("/ws"), task_id="t", floor=IsolationLevel.CONTAINER,
                       max_output_bytes=12345).request.output_limit_bytes == 12345


# -- inputs and the local cache --------------------------------------------------------------------------------


class FakeRemote:
    """Counts fetches; slow enough that concurrent actions overlap."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.fetched: list[str] = []

    async def read_small(self, digests):
        await asyncio.sleep(0.05)
        self.fetched += [key(d) for d in digests]
        return {key(d): self.blobs[key(d)] for d in digests}

    async def read_stream(self, digest, sink):
        await asyncio.sleep(0.05)
        self.fetched.append(key(digest))
        sink.write(self.blobs[key(digest)])


async def test_concurrent_actions_fetch_each_input_once_and_get_correct_bytes(tmp_path):
    contents = [f"blob {i}".encode() * (i + 1) for i in range(20)] + [b"L" * (3 << 20)]
    digests = [digest_of(c) for c in contents]
    remote = FakeRemote({key(d): c for d, c in zip(digests, contents)})
    cas = LocalCas(tmp_path / "cas", 64 << 20, remote)  # type: ignore[arg-type]

    async def action(wanted):
        with cas.pinned(wanted):
            await cas.ensure(wanted)
            return [cas.read(d) for d in wanted]

    results = await asyncio.gather(*(action(digests[i % 5:]) for i in range(8)))
    assert sorted(remote.fetched) == sorted(key(d) for d in digests)          # each blob fetched exactly once
    for i, got in enumerate(results):
        assert got == contents[i % 5:]
    assert cas.hits > 0 and cas.misses == len(digests)


async def test_the_cache_stays_within_its_bound_and_never_evicts_a_pinned_blob(tmp_path):
    contents = [bytes([i]) * 1000 for i in range(10)]
    digests = [digest_of(c) for c in contents]
    remote = FakeRemote({key(d): c for d, c in zip(digests, contents)})
    cas = LocalCas(tmp_path / "cas", 3500, remote)  # type: ignore[arg-type]
    with cas.pinned(digests[:2]):
        await cas.ensure(digests[:2])
        for digest in digests[2:]:
            with cas.pinned([digest]):
                await cas.ensure([digest])
            assert cas.total_bytes <= 3500
        assert cas.has(digests[0]) and cas.has(digests[1])
    on_disk = sum(p.stat().st_size for p in (tmp_path / "cas").rglob("*") if p.is_file())
    assert on_disk == cas.total_bytes <= 3500
    reopened = LocalCas(tmp_path / "cas", 3500)
    assert reopened.total_bytes == cas.total_bytes


async def test_a_corrupted_blob_from_the_server_is_refused(tmp_path):
    digest = digest_of(b"the real thing")
    cas = LocalCas(tmp_path / "cas", 1 << 20, FakeRemote({key(digest): b"something else"}))  # type: ignore[arg-type]
    with pytest.raises(Exception, match="corrupted"):
        await cas.ensure([digest])
    assert not cas.has(digest)


async def test_an_input_root_is_materialized_with_modes_and_symlinks(tmp_path):
    data, tool = b"hello", b"#!/bin/sh\n"
    sub = re_pb2.Directory()
    sub.files.add(name="tool", digest=digest_of(tool), is_executable=True)
    root = re_pb2.Directory()
    root.files.add(name="a.txt", digest=digest_of(data))
    root.directories.add(name="bin", digest=digest_of(sub.SerializeToString()))
    root.symlinks.add(name="link", target="a.txt")
    cas = LocalCas(tmp_path / "cas", 1 << 20)
    for blob in (data, tool):
        cas.put(digest_of(blob), blob)
    directories = {key(digest_of(root.SerializeToString())): root, key(digest_of(sub.SerializeToString())): sub}
    (tmp_path / "ws").mkdir()
    assert materialize(cas, directories, digest_of(root.SerializeToString()), tmp_path / "ws") == 2
    assert (tmp_path / "ws" / "a.txt").read_bytes() == data
    assert os.access(tmp_path / "ws" / "bin" / "tool", os.X_OK)
    assert os.readlink(tmp_path / "ws" / "link") == "a.txt"
    (tmp_path / "ws" / "a.txt").chmod(0o644)
    (tmp_path / "ws" / "a.txt").write_bytes(b"changed by the action")
    assert cas.read(digest_of(data)) == data                                   # a copy, never a shared inode


# -- bad input: the same bounds and refusals as a task (issue #14) --------------------------------------------


@pytest.mark.parametrize("props, fragment", [
    ({"cpu": "1e30"}, "platform property cpu='1e30': must be from 1m to 1024 CPU cores"),
    ({"memory": "999999Ei"}, "platform property memory='999999Ei': must be more than 0 and at most 64Ti"),
    ({"disk": "1Ei"}, "platform property disk='1Ei': must be more than 0 and at most 64Ti"),
    ({"memory": "1e999999999"}, "platform property memory='1e999999999'"),
    ({"pids": "99999999999999999999"}, "platform property pids="),
])
def test_platform_limits_have_the_apis_upper_bounds(props, fragment):
    with pytest.raises(InvalidAction, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        plan(command(platform=props))


def test_a_nul_byte_in_an_argument_or_the_environment_is_refused():
    with pytest.raises(InvalidAction, match=r"Command.arguments\[2\]: contains a NUL byte"):
        plan(command(arguments=["sh", "-c", "echo a\0b"]))
    env = [re_pb2.Command.EnvironmentVariable(name="A", value="x\0y")]
    with pytest.raises(InvalidAction, match="Command.environment_variables"):
        plan(command(environment_variables=env))


# -- nothing is created through an input symlink (as root, before the action runs) ---------------------------


def test_output_parents_are_not_created_through_an_input_symlink(tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "host").mkdir()
    os.symlink(tmp_path / "host", tmp_path / "ws" / "out")        # an input symlink, any target (REAPI allows it)
    (tmp_path / "ws" / "real").mkdir()
    with pytest.raises(CasError, match="'out' is a symlink") as refused:
        prepare_output_parents(tmp_path / "ws", ["real/a/b/file", "out/sub/file"])
    assert refused.value.code == reapi_protos.code_pb2.INVALID_ARGUMENT
    assert list((tmp_path / "host").iterdir()) == []
    assert (tmp_path / "ws" / "real" / "a" / "b").is_dir()        # the positive control: real parents are made


def test_an_input_tree_cannot_write_through_its_own_symlink(tmp_path):
    """A Directory naming a symlink and a subdirectory alike: the files of the subdirectory went through
    the link, written by root wherever it pointed."""
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    victim = host_dir / "victim"
    victim.write_text("host data")
    victim.chmod(0o600)
    data = b"planted"
    sub = re_pb2.Directory()
    sub.files.add(name="victim", digest=digest_of(data))
    sub.files.add(name="planted", digest=digest_of(data))
    root = re_pb2.Directory()
    root.directories.add(name="d", digest=digest_of(sub.SerializeToString()))
    root.symlinks.add(name="d", target=str(host_dir))
    cas = LocalCas(tmp_path / "cas", 1 << 20)
    cas.put(digest_of(data), data)
    directories = {key(digest_of(root.SerializeToString())): root, key(digest_of(sub.SerializeToString())): sub}
    (tmp_path / "ws").mkdir()
    with pytest.raises(CasError, match="'d' twice"):
        materialize(cas, directories, digest_of(root.SerializeToString()), tmp_path / "ws")
    assert victim.read_text() == "host data" and sorted(p.name for p in host_dir.iterdir()) == ["victim"]


@pytest.mark.parametrize("props, fragment", [
    ({"container-image": "docker://Not An/Image"}, "platform property container-image: 'Not An/Image' is not an "
                                                   "image reference"),
    ({"seccomp": "Localhost/../escape.json"}, "platform property seccomp: "),
])
def test_a_property_no_task_could_hold_is_invalid_before_anything_is_fetched(props, fragment):
    """The worker file's judge sees the action as a task: what a manifest refuses, the action names."""
    with pytest.raises(InvalidAction, match=re.escape(fragment)):
        judged(plan(command(platform=props)), WorkerConfig())
