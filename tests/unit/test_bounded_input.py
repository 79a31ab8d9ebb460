"""Parsing a task or a worker file is bounded before it is expensive (issue #14): size, aliases, depth,
duplicate keys; and an error quotes at most a short excerpt of what it refuses."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from expbuild_isolation.worker.config import ConfigError, load_worker_config
from expbuild_isolation.worker.local import InvalidTask, load_task

ROOT = Path(__file__).resolve().parents[2]
HEAD = "apiVersion: expbuild.io/v1alpha1\nkind: ExecutionTask\nmetadata: {name: t}\nspec:\n"


def alias_bomb(levels: int = 9) -> str:
    """The 372-byte shape from the issue: each level nine aliases of the one before (9**9 strings)."""
    lines = ['  a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"  a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines)


def write(tmp_path: Path, text: str, name: str = "task.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(path: Path) -> str:
    started = time.monotonic()
    with pytest.raises(InvalidTask) as caught:
        load_task(path)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message[:400]
    return message


def test_an_alias_bomb_in_the_command_is_refused_fast_and_briefly(tmp_path):
    assert len("bomb:\n" + alias_bomb()) < 600
    message = refused(write(tmp_path, "bomb:\n" + alias_bomb() + "\n" + HEAD + "  command: *a8\n"))
    assert "aliases are expanded" in message


def test_an_alias_bomb_in_the_env_is_refused(tmp_path):
    message = refused(write(tmp_path, "bomb:\n" + alias_bomb() + "\n" + HEAD
                            + "  command: [true]\n  env: [{name: A, value: *a8}]\n"))
    assert "aliases are expanded" in message


def test_a_few_aliases_are_still_fine(tmp_path):
    task = load_task(write(tmp_path, "defaults: &args [sh, -c, 'true']\n---\n" + HEAD + "  command: [sh, -c, 'true']\n"
                           + "  env: &e [{name: A, value: x}]\n"))
    assert task.spec.command == ["sh", "-c", "true"]


def test_deep_nesting_is_refused_before_python_recurses(tmp_path):
    message = refused(write(tmp_path, HEAD + "  command: " + "[" * 5000 + "]" * 5000 + "\n"))
    assert "nested deeper than" in message and "line 5" in message


def test_a_key_written_twice_is_refused_not_silently_overwritten(tmp_path):
    message = refused(write(tmp_path, HEAD + "  command: [echo, one]\n  command: [echo, two]\n"))
    assert "the key 'command' appears twice" in message and "line 6" in message


def test_an_oversize_file_is_refused_without_echoing_it(tmp_path):
    message = refused(write(tmp_path, HEAD + "  command: [echo, '" + "x" * (4 << 20) + "']\n"))
    assert "larger than" in message and "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" not in message


def test_an_overlong_value_is_quoted_as_a_short_excerpt(tmp_path):
    message = refused(write(tmp_path, HEAD + "  command: [echo, '" + "x" * 300_000 + "']\n"))
    assert "spec.command[1]" in message and "(300000 characters)" in message


def test_binary_garbage_is_one_clear_line(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert "not UTF-8" in refused(path)


def test_a_control_character_is_one_clear_line(tmp_path):
    """Found by the fuzzer: PyYAML refuses it while constructing the loader, outside the usual error path."""
    assert "unacceptable character #x001f" in refused(write(tmp_path, "\x1f"))


def test_a_directory_is_not_a_manifest(tmp_path):
    assert "is a directory" in refused(tmp_path)


def test_the_cli_refuses_a_bomb_in_one_line_with_exit_125(tmp_path):
    path = write(tmp_path, "bomb:\n" + alias_bomb() + "\n" + HEAD + "  command: *a8\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "expbuild_isolation.cli", "run", str(path), "-o", "json"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert time.monotonic() - started < 30
    assert result.returncode == 125 and result.stderr.count("\n") == 1, result.stderr[:500]
    assert "internal error" not in result.stderr and len(result.stderr) < 400


@pytest.mark.parametrize("body, fragment", [
    ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("worker_id = 'a'\nworker_id = 'b'\n", "not valid TOML"),
    ("worker_id = '" + "x" * (2 << 20) + "'\n", "larger than"),
    ("worker_id = '" + "x" * 5000 + "'\nmax_concurrent_tasks = '" + "y" * 5000 + "'\n", "(5000 characters)"),
], ids=["deep", "duplicate-key", "oversize", "long-value"])
def test_a_worker_file_is_bounded_too(tmp_path, body, fragment):
    path = write(tmp_path, body, "worker.toml")
    with pytest.raises(ConfigError) as caught:
        load_worker_config(path)
    message = str(caught.value)
    assert fragment in message and "\n" not in message and len(message) < 400, message[:400]
