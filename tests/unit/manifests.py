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
}

# Rules only a program can check; the API server cannot see them (duplicates, ports, lookalike units).
LOCAL_ONLY = {"gb-not-gi", "bad-allow"}
