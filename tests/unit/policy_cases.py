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

# Tasks a policy allows: every enforcer lets these through (with the policy's floor, where it raises one).
ALLOWED = {
    "floor-above": ({"isolation": {"minimum": "Container"}}, {"isolation": {"minimum": "VM"}}),
    "floor-raised": ({"isolation": {"minimum": "Container", "belowMinimum": "Raise"}},
                     {"isolation": {"minimum": "None"}}),
    "no-runtime-class": ({"isolation": {"runtimeClasses": ["gvisor"]}}, {}),  # none named: nothing to refuse
    "listed": ({"isolation": {"executors": ["auto"], "seccompProfiles": ["RuntimeDefault"]}}, {}),
    "at-the-caps": ({"maxResources": {"cpu": "2", "memory": "1Gi", "disk": "1Gi", "pids": 64, "timeout": "10m"}},
                    {"resources": {"cpu": 2, "memory": "1024Mi", "disk": "1Gi", "pids": 64}}),
    "below-the-caps": ({"maxResources": {"cpu": "2", "memory": "1Gi"}},
                       {"resources": {"cpu": "500m", "memory": 1048576}, "timeout": "90s"}),
    "timeout-in-days": ({"maxResources": {"timeout": "48h"}}, {"timeout": "1d"}),
    "inside-the-cidrs": ({"network": {"restrictedCidrs": ["10.20.0.0/16", "fd00::/8"]}},
                         {"network": {"policy": "Restricted",
                                      "allow": ["10.20.3.4", "10.20.0.0/16:443", "10.20.1.5/24", "[fd00::1]:80",
                                                "[fd00::]/64:443"]}}),
    "cidrs-unused": ({"network": {"restrictedCidrs": ["10.20.0.0/16"]}}, {"network": {"policy": "None"}}),
    "pinned-allowed-image": ({"images": {"allowed": ["registry.local/*"], "requireDigest": True}},
                             {"image": f"registry.local/gcc@sha256:{DIGEST}"}),
    "no-image": ({"images": {"allowed": ["registry.local/*"], "requireDigest": True}}, {}),  # nothing is pulled
    "quota-only": ({"maxUnfinishedTasks": 1}, {}),
}
