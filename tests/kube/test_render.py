from __future__ import annotations

import pytest

from expbuild_isolation.api.task import IsolationLevel
from expbuild_isolation.kube import render
from expbuild_isolation.kube.config import OperatorConfig
from expbuild_isolation.kube.errors import ImageNotAllowed, IsolationUnavailable, RenderError
from expbuild_isolation.kube.names import object_name, task_label

from .conftest import REPRESENTATIVE, make_task


def containers(job: dict) -> list[dict]:
    pod = job["spec"]["template"]["spec"]
    return pod["initContainers"] + pod["containers"]


def test_the_job_never_retries_and_stops_at_the_timeout(config):
    job = render.render_job(make_task(timeout="90.2s"), config)
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 91
    assert job["spec"]["ttlSecondsAfterFinished"] == config.job_ttl_seconds
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_every_owned_object_points_back_to_the_task_as_controller(config):
    task = make_task(**REPRESENTATIVE["compile"])
    for obj in render.objects_for(task, config):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask", "name": "compile-42",
                         "uid": task.metadata.uid, "controller": True, "blockOwnerDeletion": True}
        assert obj["metadata"]["labels"] == {"expbuild.io/task": "compile-42",
                                             "app.kubernetes.io/managed-by": "expbuild-isolation"}


def test_names_are_deterministic_and_fit_a_dns_label():
    assert object_name("hello") == "xt-hello"
    long = "a" * 200
    assert object_name(long) == object_name(long) and len(object_name(long)) <= 63
    assert len(object_name(long, "-inputs")) <= 63 and object_name(long, "-inputs").endswith("-inputs")
    assert object_name("my.task.v2") != object_name("my-task-v2")
    assert object_name("a" * 61) != object_name("a" * 61 + "b")
    assert len(task_label("x" * 100)) <= 63 and task_label("plain") == "plain"


def test_requests_equal_limits_for_cpu_memory_and_disk(config):
    job = render.render_job(make_task(resources={"cpu": "2", "memory": "2Gi", "disk": "1Gi"}), config)
    for container in containers(job):
        assert container["resources"]["requests"] == container["resources"]["limits"] == {
            "cpu": "2", "memory": "2Gi", "ephemeral-storage": "1Gi"}


def test_workspace_and_tmp_are_memory_backed_and_bounded(config):
    pod = render.render_pod_spec(make_task(resources={"disk": "300Mi"}), config)
    volumes = {v["name"]: v for v in pod["volumes"]}
    for name in ("workspace", "tmp"):
        assert volumes[name]["emptyDir"] == {"medium": "Memory", "sizeLimit": "300Mi"}
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/workspace", "/tmp"} <= mounts


def test_the_pod_is_locked_down(config):
    pod = render.render_pod_spec(make_task(isolation={"runAsUser": 1234, "readOnlyRootFilesystem": False}), config)
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert not any(pod[key] for key in ("hostNetwork", "hostPID", "hostIPC"))
    for container in pod["initContainers"] + pod["containers"]:
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 1234
        assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"] == {"drop": ["ALL"]}
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is False
    assert pod["initContainers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_root_is_refused_with_a_reason(config):
    with pytest.raises(RenderError, match="runAsUser: 0 .*restricted"):
        render.objects_for(make_task(isolation={"runAsUser": 0}), config)


@pytest.mark.parametrize(("asked", "expected"), [
    ("RuntimeDefault", {"type": "RuntimeDefault"}),
    ("expbuild-strict", {"type": "Localhost", "localhostProfile": "profiles/expbuild-strict.json"}),
    ("expbuild-default", {"type": "Localhost", "localhostProfile": "profiles/expbuild-default.json"}),
    ("Localhost/custom/build.json", {"type": "Localhost", "localhostProfile": "custom/build.json"}),
])
def test_seccomp_profiles_map_to_the_pod(config, asked, expected):
    pod = render.render_pod_spec(make_task(isolation={"seccompProfile": asked}), config)
    assert pod["securityContext"]["seccompProfile"] == expected
    assert all(c["securityContext"]["seccompProfile"] == expected for c in pod["initContainers"] + pod["containers"])


def test_the_operator_default_seccomp_applies_only_when_the_task_leaves_it_unset():
    config = OperatorConfig(default_seccomp="expbuild-default")
    unset = render.render_pod_spec(make_task(), config)
    explicit = render.render_pod_spec(make_task(isolation={"seccompProfile": "RuntimeDefault"}), config)
    assert unset["securityContext"]["seccompProfile"]["localhostProfile"] == "profiles/expbuild-default.json"
    assert explicit["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_unconfined_is_marked_as_not_restricted(config):
    job = render.render_job(make_task(isolation={"minimum": "None", "seccompProfile": "Unconfined"}), config)
    assert job["spec"]["template"]["metadata"]["annotations"]["expbuild.io/pod-security"] == "privileged"
    assert job["spec"]["template"]["spec"]["securityContext"]["seccompProfile"] == {"type": "Unconfined"}


def test_vm_level_uses_the_tasks_or_the_operators_runtime_class():
    task = make_task(isolation={"minimum": "VM"})
    with pytest.raises(IsolationUnavailable, match="VM needs a RuntimeClass"):
        render.objects_for(task, OperatorConfig())
    assert render.render_pod_spec(task, OperatorConfig(vm_runtime_class="kata"))["runtimeClassName"] == "kata"
    gvisor = make_task(isolation={"runtimeClassName": "gvisor"})
    assert render.render_pod_spec(gvisor, OperatorConfig())["runtimeClassName"] == "gvisor"
    assert "runtimeClassName" not in render.render_pod_spec(make_task(), OperatorConfig(vm_runtime_class="kata"))


def test_only_a_trusted_runtime_class_counts_as_vm():
    gpu = make_task(isolation={"runtimeClassName": "nvidia"})
    assert render.isolation_level(gpu, OperatorConfig(vm_runtime_class="kata")) is IsolationLevel.CONTAINER
    assert render.isolation_level(gpu, OperatorConfig(vm_runtime_classes=["nvidia"])) is IsolationLevel.VM
    wants_vm = make_task(isolation={"minimum": "VM", "runtimeClassName": "nvidia"})
    with pytest.raises(IsolationUnavailable, match="'nvidia' is not a RuntimeClass this cluster counts as VM"):
        render.objects_for(wants_vm, OperatorConfig(vm_runtime_class="kata"))
    trusted = OperatorConfig.from_env({"EXPBUILD_VM_RUNTIME_CLASS": "kata", "EXPBUILD_VM_RUNTIME_CLASSES": "gvisor, x"})
    assert trusted.trusted_vm_runtime_classes == {"kata", "gvisor", "x"}


def test_the_task_cannot_replace_the_supervisor_and_is_killed_soon_after_its_deadline(config):
    pod = render.render_pod_spec(make_task(), config)
    (main,) = pod["containers"]
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    assert mounts["tools"]["readOnly"] is True  # the busybox that digests the outputs
    assert mounts["workspace"].get("readOnly") is not True
    prepare = {m["name"]: m for m in pod["initContainers"][0]["volumeMounts"]}
    assert prepare["tools"].get("readOnly") is not True  # where the busybox is installed
    assert pod["terminationGracePeriodSeconds"] == 5


def test_images_outside_the_allow_list_are_refused():
    config = OperatorConfig(allowed_images=["registry.local/*", "localhost/busybox:*"])
    render.check_task(make_task(), config)
    with pytest.raises(ImageNotAllowed, match="'docker.io/evil:1' is not allowed"):
        render.check_task(make_task(image="docker.io/evil:1"), config)


def test_executors_the_operator_does_not_serve_are_refused(config):
    with pytest.raises(RenderError) as err:
        render.check_task(make_task(isolation={"executor": "docker"}), config)
    assert err.value.reason == "ExecutorUnavailable"


def test_inline_inputs_go_through_an_owned_config_map(config):
    task = make_task(**REPRESENTATIVE["compile"])
    cm = render.render_inputs_config_map(task)
    assert cm["metadata"]["name"] == "xt-compile-42-inputs"
    assert cm["data"] == {"input-0": "all:\n\techo built > out/app\n", "input-1": "#!/bin/sh\necho run\n"}
    prepare = render.render_pod_spec(task, config)["initContainers"][0]["command"]
    steps = prepare[prepare.index("expbuild-prepare") + 5:]
    assert steps == ["file", "/expbuild-inputs/inline/input-0", "src/Makefile", "0644",
                     "file", "/expbuild-inputs/inline/input-1", "src/run.sh", "0755",
                     "dir", "/expbuild-inputs/cm-2", "src/lib"]
    assert render.render_inputs_config_map(make_task()) is None


def test_the_command_runs_under_the_supervisor_with_argv_intact(config):
    task = make_task(command=["python3", "-c", "print('$HOME; rm -rf /')"], outputs={"paths": ["out/a"]})
    command = render.render_pod_spec(task, config)["containers"][0]["command"]
    assert command[:3] == ["/expbuild/bin/busybox", "sh", "-c"]
    assert command[-5:] == ["3", "python3", "-c", "print('$HOME; rm -rf /')", "out/a"]


def test_image_pull_policy_and_working_dir_come_from_the_spec(config):
    main = render.render_pod_spec(make_task(imagePullPolicy="Never", workingDir="src/sub"), config)["containers"][0]
    assert main["imagePullPolicy"] == "Never" and main["workingDir"] == "/workspace/src/sub"


def test_too_much_inline_content_is_refused(config):
    inputs = [{"path": f"f{i}", "content": "x" * 200_000} for i in range(5)]
    with pytest.raises(RenderError, match="exceed"):
        render.objects_for(make_task(inputs=inputs), config)
