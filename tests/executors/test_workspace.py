"""Outputs are digested without ever following a symlink out of the workspace."""

import hashlib
import os

import pytest

from expbuild_isolation.executors.workspace import (
    InputBlob, WorkspaceError, collect_outputs, create_workspace, place_inputs, remove_workspace, workspace_with,
)


@pytest.fixture
def workspace():
    path = create_workspace()
    yield path
    remove_workspace(path)


def test_regular_outputs_are_digested(workspace):
    (workspace / "a").write_bytes(b"hello")
    files, problems = collect_outputs(workspace, ["a"])
    assert problems == []
    assert files[0].sha256 == hashlib.sha256(b"hello").hexdigest() and files[0].size_bytes == 5


def test_a_symlink_output_to_etc_shadow_is_refused_not_followed(workspace):
    os.symlink("/etc/shadow", workspace / "leak")
    files, problems = collect_outputs(workspace, ["leak"])
    assert files == []
    assert "symlink" in problems[0] and "'leak'" in problems[0]


def test_a_symlinked_directory_on_the_way_is_refused(workspace):
    os.symlink("/etc", workspace / "dir")
    files, problems = collect_outputs(workspace, ["dir/passwd"])
    assert files == [] and "passes through 'dir'" in problems[0]


def test_a_relative_symlink_inside_the_workspace_is_still_refused(workspace):
    (workspace / "real").write_text("x")
    os.symlink("real", workspace / "alias")
    _, problems = collect_outputs(workspace, ["alias"])
    assert "symlink" in problems[0]


def test_missing_and_special_outputs_are_reported(workspace):
    (workspace / "d").mkdir()
    os.mkfifo(workspace / "fifo")
    files, problems = collect_outputs(workspace, ["nope", "d", "fifo"])
    assert files == []
    assert "was not created" in problems[0] and "directory" in problems[1] and "not a regular file" in problems[2]


def test_outputs_with_dotdot_are_refused(workspace):
    _, problems = collect_outputs(workspace, ["../etc/passwd"])
    assert "not a path inside the workspace" in problems[0]


def test_inputs_are_placed_and_the_workspace_removed_even_if_made_read_only():
    with workspace_with([InputBlob("src/main.c", b"int main(){}", False), InputBlob("run.sh", b"#!/bin/sh", True)]) as ws:
        assert (ws / "src/main.c").read_bytes() == b"int main(){}"
        assert os.access(ws / "run.sh", os.X_OK)
        (ws / "src").chmod(0o500)
    assert not ws.exists()


def test_inputs_cannot_leave_the_workspace(workspace):
    with pytest.raises(WorkspaceError):
        place_inputs(workspace, [InputBlob("../escape", b"x")])
