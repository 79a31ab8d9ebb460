import pytest

from expbuild_isolation.api.task import ExecutionTask, IsolationLevel, NetworkMode
from expbuild_isolation.worker.local import InvalidTask, parse_task

from .manifests import BAD, GOOD, task


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_manifests_are_accepted(name):
    parsed = parse_task(GOOD[name])
    assert parsed.spec.command


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_manifests_get_a_message_naming_the_problem(name):
    manifest, fragment = BAD[name]
    with pytest.raises(InvalidTask) as caught:
        parse_task(manifest, source="task.yaml")
    message = str(caught.value)
    assert message.startswith("task.yaml: ")
    assert fragment in message
    assert "\n" not in message and "Traceback" not in message


def test_defaults_are_the_hardened_ones():
    spec = parse_task(task()).spec
    assert spec.network.policy is NetworkMode.NONE
    assert spec.isolation.minimum is IsolationLevel.CONTAINER
    assert spec.isolation.read_only_root_filesystem is True
    assert spec.isolation.run_as_user == 65534
    assert spec.isolation.seccomp_profile == "RuntimeDefault"
    assert spec.timeout_seconds == 600


def test_quantities_are_parsed_once_into_numbers():
    spec = parse_task(GOOD["full"]).spec
    assert spec.resources.cpu_cores == 2.0
    assert spec.resources.memory_bytes == 2 * 2**30
    assert spec.resources.disk_bytes == 2**30
    assert spec.timeout_seconds == 600


def test_paths_are_normalized():
    spec = parse_task(task(outputs={"paths": ["./out//app"]}, workingDir="src/.")).spec
    assert spec.outputs.paths == ["out/app"]
    assert spec.working_dir == "src"


def test_isolation_levels_are_ordered():
    levels = [IsolationLevel.NONE, IsolationLevel.PROCESS, IsolationLevel.FILESYSTEM, IsolationLevel.CONTAINER,
              IsolationLevel.VM]
    assert sorted(reversed(levels)) == levels
    assert IsolationLevel.PROCESS < IsolationLevel.CONTAINER <= IsolationLevel.CONTAINER < IsolationLevel.VM
    # every comparison, and max/min, by rank: the names sort otherwise ("None" > "Container")
    assert IsolationLevel.NONE < IsolationLevel.CONTAINER and not IsolationLevel.NONE >= IsolationLevel.CONTAINER
    assert IsolationLevel.VM > IsolationLevel.NONE and IsolationLevel.CONTAINER >= IsolationLevel.FILESYSTEM
    assert max(IsolationLevel.NONE, IsolationLevel.CONTAINER) is IsolationLevel.CONTAINER
    assert min(IsolationLevel.VM, IsolationLevel.PROCESS) is IsolationLevel.PROCESS


def test_duplicate_env_names_are_refused():
    with pytest.raises(InvalidTask, match="'A' is set twice"):
        parse_task(task(env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]))


def test_status_round_trips_through_camel_case():
    obj = task()
    obj["status"] = {"phase": "Succeeded", "exitCode": 0, "isolationLevel": "Container", "executor": "job"}
    parsed = ExecutionTask.model_validate(obj)
    dumped = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert dumped["status"]["exitCode"] == 0 and dumped["status"]["isolationLevel"] == "Container"


def test_a_key_holding_a_newline_is_quoted_so_the_error_stays_one_line():
    """Found by the fuzzer (tests/fuzz): an unknown key's raw newline split the one-line error."""
    manifest = task(network={"policy": "None", "bad\nkey": 1})
    with pytest.raises(InvalidTask) as caught:
        parse_task(manifest)
    assert "\n" not in str(caught.value) and "spec.network['bad\\nkey']: unknown field" in str(caught.value)
