"""Good and bad ExecutionTask manifests shared by the model and CRD tests.

Each bad manifest comes with a fragment of the message a user must see.
"""

import copy


def task(**spec):
    base = {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask",
            "metadata": {"name": "t", "namespace": "ci"}, "spec": {"command": ["sh", "-c", "true"]}}
    base["spec"].update(spec)
    return copy.deepcopy(base)


GOOD = {
    "minimal": task(),
    "full": task(image="localhost/busybox:latest", env=[{"name": "CC", "value": "gcc"}], workingDir="src",
                 inputs=[{"path": "src/Makefile", "content": "all:\n"}, {"path": "src", "configMap": {"name": "s"}}],
                 outputs={"paths": ["src/out/app"]}, timeout="10m",
                 resources={"cpu": "2", "memory": "2Gi", "disk": "1Gi", "pids": 128},
                 network={"policy": "Restricted", "allow": ["10.20.0.0/16:443"]},
                 isolation={"minimum": "Container", "executor": "auto", "seccompProfile": "expbuild-strict"}),
    "unconfined-with-none": task(isolation={"minimum": "None", "seccompProfile": "Unconfined"}),
    "integer-quantities": task(resources={"cpu": 1, "memory": 1073741824}),
    "localhost-profile": task(isolation={"seccompProfile": "Localhost/profiles/my.json"}),
    "cpu-millis": task(resources={"cpu": "250m"}),
    "largest-limits": task(resources={"cpu": "1024", "memory": "64Ti", "disk": 70368744177664, "pids": 4194304},
                           timeout="7d"),
    "timeout-in-parts": task(timeout="1d23h59m59s999ms"),
    "timeout-plain-seconds": task(timeout="604800"),
    "configmap-into-the-workspace-root": task(inputs=[{"path": ".", "configMap": {"name": "s"}}]),
    "image-with-registry-port-tag": task(image="registry.local:5000/team/app_x/run-1:1.2-rc_1"),
    "image-by-digest": task(image="ghcr.io/expbuild/expbuild-isolation@sha256:" + "0a" * 32),
}

BAD = {
    "no-command": (task(command=[]), "spec.command"),
    "negative-memory": (task(resources={"memory": "-1Gi"}), "spec.resources.memory"),
    "gb-not-gi": (task(resources={"memory": "2GB"}), 'did you mean "2Gi"'),
    "zero-pids": (task(resources={"pids": 0}), "spec.resources.pids"),
    "restricted-without-allow": (task(network={"policy": "Restricted"}), "Restricted needs at least one allow"),
    "allow-without-restricted": (task(network={"policy": "None", "allow": ["10.0.0.0/8"]}),
                                 "allow is only used with policy Restricted"),
    "unconfined-above-none": (task(isolation={"seccompProfile": "Unconfined"}), "Unconfined needs"),
    "absolute-output": (task(outputs={"paths": ["/etc/passwd"]}), "relative"),
    "dotdot-output": (task(outputs={"paths": ["out/../../x"]}), ".."),
    "absolute-input": (task(inputs=[{"path": "/etc/x", "content": "x"}]), "relative"),
    "dotdot-input": (task(inputs=[{"path": "../x", "content": "x"}]), ".."),
    "dotdot-workdir": (task(workingDir="../up"), ".."),
    "input-both-sources": (task(inputs=[{"path": "a", "content": "x", "configMap": {"name": "c"}}]),
                           "exactly one of content or configMap"),
    "input-no-source": (task(inputs=[{"path": "a"}]), "exactly one of content or configMap"),
    "bad-timeout": (task(timeout="ten minutes"), "spec.timeout"),
    "unknown-isolation": (task(isolation={"minimum": "Paranoid"}), "spec.isolation.minimum"),
    "unknown-executor": (task(isolation={"executor": "lxc"}), "spec.isolation.executor"),
    "bad-seccomp": (task(isolation={"seccompProfile": "mine"}), "spec.isolation.seccompProfile"),
    "bad-env-name": (task(env=[{"name": "1 bad"}]), "spec.env"),
    "bad-allow": (task(network={"policy": "Restricted", "allow": ["not a cidr!"]}), "not CIDR"),
    # A ConfigMap name is an object name: no path into another namespace or the node's file system.
    "configmap-name-path": (task(inputs=[{"path": "src", "configMap": {"name": "../../other/configmaps/x"}}]),
                            "not a Kubernetes object name"),
    "configmap-name-uppercase": (task(inputs=[{"path": "src", "configMap": {"name": "Sources"}}]),
                                 "not a Kubernetes object name"),
    # The API server refuses a Pod whose localhostProfile contains '..' (seen on a real cluster: 422).
    "localhost-profile-dotdot": (task(isolation={"seccompProfile": "Localhost/../../../../etc/passwd"}),
                                 "spec.isolation.seccompProfile"),
    "localhost-profile-absolute": (task(isolation={"seccompProfile": "Localhost//etc/passwd"}),
                                   "spec.isolation.seccompProfile"),
    "localhost-profile-hidden": (task(isolation={"seccompProfile": "Localhost/profiles/.x/../y.json"}),
                                 "spec.isolation.seccompProfile"),
    # issue #14: every quantity has an upper bound, with the same message in the models and the CRD
    "cpu-1e30": (task(resources={"cpu": "1e30"}), "spec.resources.cpu: '1e30' is out of range: must be from 1m"),
    "cpu-int-too-many": (task(resources={"cpu": 1025}), "spec.resources.cpu: 1025 is out of range"),
    "cpu-zero": (task(resources={"cpu": 0}), "spec.resources.cpu: 0 is out of range"),
    "memory-999999Ei": (task(resources={"memory": "999999Ei"}), "spec.resources.memory: '999999Ei' is out of range"),
    "memory-huge-exponent": (task(resources={"memory": "1e999999999"}), "spec.resources.memory: '1e999999999' is out"),
    "memory-zero": (task(resources={"memory": "0"}), "spec.resources.memory: '0' is out of range"),
    "disk-1Ei": (task(resources={"disk": "1Ei"}), "spec.resources.disk: '1Ei' is out of range"),
    "disk-int-too-big": (task(resources={"disk": 70368744177665}), "spec.resources.disk: 70368744177665 is out"),
    "pids-too-many": (task(resources={"pids": 4194305}), "spec.resources.pids"),
    "timeout-8d": (task(timeout="8d"), "spec.timeout: '8d' is out of range: must be a duration more than 0 and at most 7d"),
    "timeout-huge": (task(timeout="99999999999d"), "spec.timeout: '99999999999d' is out of range"),
    "timeout-plain-too-long": (task(timeout="604801"), "spec.timeout: '604801' is out of range"),
    "timeout-168h-and-a-bit": (task(timeout="168h1ns"), "spec.timeout: '168h1ns' is out of range"),
    "timeout-zero": (task(timeout="0s"), "spec.timeout: '0s' is out of range"),
    "timeout-units-out-of-order": (task(timeout="30m1h"), "spec.timeout"),
    # NUL bytes: a clear refusal at validation, not a traceback from an executor
    "nul-in-command": (task(command=["sh", "-c", "echo a\0b"]), "spec.command[2]: contains a NUL byte"),
    "nul-in-env": (task(env=[{"name": "A", "value": "x\0y"}]), "spec.env[0].value: contains a NUL byte"),
    # an image reference every engine refuses: refused here, naming the field (it was ExecutorFailed from Docker)
    "image-uppercase": (task(image="UPPER/Bad"), "spec.image: 'UPPER/Bad' is not an image reference"),
    "image-with-space": (task(image="busybox latest"), "spec.image"),
    "image-bad-digest": (task(image="busybox@sha256:zz"), "spec.image"),
    "image-with-newline": (task(image="busybox\n"), "spec.image"),
    # a content input must name a file, not the workspace itself
    "content-path-empty": (task(inputs=[{"path": "", "content": "x"}]), "a content input needs a file name"),
    "content-path-dot": (task(inputs=[{"path": ".", "content": "x"}]), "a content input needs a file name"),
    "content-path-dot-slash": (task(inputs=[{"path": "./.", "content": "x"}]), "a content input needs a file name"),
}

# bad manifest -> the CRD rule message the API server must answer with, the same words the models use
SAME_MESSAGE = {
    "cpu-1e30": "must be from 1m to 1024 CPU cores", "cpu-int-too-many": "must be from 1m to 1024 CPU cores",
    "cpu-zero": "must be from 1m to 1024 CPU cores", "memory-999999Ei": "must be more than 0 and at most 64Ti",
    "memory-huge-exponent": "must be more than 0 and at most 64Ti", "memory-zero": "must be more than 0 and at most 64Ti",
    "disk-1Ei": "must be more than 0 and at most 64Ti", "disk-int-too-big": "must be more than 0 and at most 64Ti",
    "timeout-8d": "must be a duration more than 0 and at most 7d", "timeout-huge": "must be a duration more than 0",
    "timeout-plain-too-long": "must be a duration more than 0", "timeout-168h-and-a-bit": "must be a duration more",
    "timeout-zero": "must be a duration more than 0",
    "content-path-empty": "a content input needs a file name", "content-path-dot": "a content input needs a file name",
    "content-path-dot-slash": "a content input needs a file name",
}

# Rules only a program can check; the API server cannot see them (duplicates, ports, lookalike units).
LOCAL_ONLY = {"gb-not-gi", "bad-allow"}
