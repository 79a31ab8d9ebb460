"""Tasks that break one ExecutionPolicy knob each, shared by every place that enforces policies.

The judge (tests/unit/test_policy.py), the admission policy's CEL (tests/unit/test_admission_policy.py), the
operator on KMock (tests/controller/test_policy.py), the node agent (tests/agent/test_policy.py) and
``expbuild-isolation run`` (tests/unit/test_local_policy.py) must all refuse these.

Each case: (the policy's spec, the task's spec, the field refused, its value as shown, what is accepted).
"""

DIGEST = "a" * 64

VIOLATIONS = {
    "floor": ({"isolation": {"minimum": "Container"}}, {"isolation": {"minimum": "Process"}},
              "spec.isolation.minimum", "'Process'", "at least Container"),
    "executor": ({"isolation": {"executors": ["auto", "job"]}}, {"isolation": {"executor": "host", "minimum": "None"}},
                 "spec.isolation.executor", "'host'", "allowed: auto, job"),
    "runtime-class": ({"isolation": {"runtimeClasses": ["gvisor"]}}, {"isolation": {"runtimeClassName": "runc-gpu"}},
                      "spec.isolation.runtimeClassName", "'runc-gpu'", "allowed: gvisor"),
    "seccomp": ({"isolation": {"seccompProfiles": ["expbuild-strict"]}}, {},
                "spec.isolation.seccompProfile", "'RuntimeDefault'", "allowed: expbuild-strict"),
    "cpu": ({"maxResources": {"cpu": "2"}}, {"resources": {"cpu": "2500m"}},
            "spec.resources.cpu", "'2500m'", "at most 2"),
    "memory": ({"maxResources": {"memory": "1Gi"}}, {"resources": {"memory": "2Gi"}},
               "spec.resources.memory", "'2Gi'", "at most 1Gi"),
    "memory-unset": ({"maxResources": {"memory": "1Gi"}}, {},
                     "spec.resources.memory", "unset (no limit)", "at most 1Gi"),
    "disk": ({"maxResources": {"disk": "1Gi"}}, {"resources": {"disk": "5Gi"}},
             "spec.resources.disk", "'5Gi'", "at most 1Gi"),
    "pids": ({"maxResources": {"pids": 64}}, {"resources": {"pids": 65}}, "spec.resources.pids", "65", "at most 64"),
    "timeout": ({"maxResources": {"timeout": "5m"}}, {"timeout": "1h"}, "spec.timeout", "'1h'", "at most 5m"),
    "timeout-default": ({"maxResources": {"timeout": "5m"}}, {}, "spec.timeout", "'10m'", "at most 5m"),
    "network-policy": ({"network": {"policies": ["None"]}}, {"network": {"policy": "Full"}},
                       "spec.network.policy", "'Full'", "allowed: None"),
    "cidr": ({"network": {"restrictedCidrs": ["10.20.0.0/16"]}},
             {"network": {"policy": "Restricted", "allow": ["10.20.1.0/24:443", "10.0.0.0/8:443"]}},
             "spec.network.allow", "'10.0.0.0/8:443'", "inside one of 10.20.0.0/16"),
    "cidr-hostname": ({"network": {"restrictedCidrs": ["10.20.0.0/16"]}},
                      {"network": {"policy": "Restricted", "allow": ["example.com:443"]}},
                      "spec.network.allow", "'example.com:443'", "inside one of"),
    "cidr-family": ({"network": {"restrictedCidrs": ["fd00::/8"]}},
                    {"network": {"policy": "Restricted", "allow": ["10.1.2.3:80"]}},
                    "spec.network.allow", "'10.1.2.3:80'", "fd00"),
    "image": ({"images": {"allowed": ["registry.local/*"]}}, {"image": "docker.io/evil/miner:latest"},
              "spec.image", "'docker.io/evil/miner:latest'", "allowed: registry.local/*"),
    "digest": ({"images": {"requireDigest": True}}, {"image": "registry.local/gcc:13"},
               "spec.image", "'registry.local/gcc:13'", "pinned by digest"),
}
