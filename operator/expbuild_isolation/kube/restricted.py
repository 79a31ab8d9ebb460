"""The Pod Security Standards *restricted* profile (baseline included) as a pure check.

``violations(pod_spec)`` lists every rule a pod spec breaks, in words a
reviewer can act on; an empty list means the namespace label
``pod-security.kubernetes.io/enforce: restricted`` would admit it.
See https://kubernetes.io/docs/concepts/security/pod-security-standards/.
"""

from __future__ import annotations

from typing import Any

ALLOWED_VOLUMES = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                             "projected", "secret"})
SAFE_SYSCTLS = frozenset({"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                          "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                          "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                          "net.ipv4.tcp_keepalive_probes"})


def violations(pod: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            found.append(f"spec.{key} must not be true")
    pod_ctx = pod.get("securityContext") or {}
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            found.append(f"volume {volume.get('name')!r} uses {sorted(kinds - ALLOWED_VOLUMES)}")
    for sysctl in pod_ctx.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl.get('name')!r} is not in the safe set")
    containers = [("initContainers", c) for c in pod.get("initContainers") or []] + \
                 [("containers", c) for c in pod.get("containers") or []] + \
                 [("ephemeralContainers", c) for c in pod.get("ephemeralContainers") or []]
    for kind, container in containers:
        where = f"{kind}[{container.get('name')}]"
        ctx = container.get("securityContext") or {}
        if ctx.get("privileged"):
            found.append(f"{where}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation must be false")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            found.append(f"{where}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{where}: may add only NET_BIND_SERVICE")
        non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
        if non_root is not True:
            found.append(f"{where}: runAsNonRoot must be true")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            found.append(f"{where}: runAsUser must not be 0")
        seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost (is {seccomp})")
        if ctx.get("procMount", "Default") != "Default":
            found.append(f"{where}: procMount must be Default")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            found.append(f"{where}: hostPort is forbidden")
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"{where}: hostProcess is forbidden")
    if (pod_ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
        found.append("spec.securityContext.seccompProfile must not be Unconfined")
    return found
