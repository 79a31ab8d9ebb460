"""The namespace backend: raw Linux namespaces, cgroups and seccomp, no container engine (isolation Container).

``executor.NamespaceExecutor`` is the backend. Beside it, the launcher it starts once and its steps, each
importing nothing heavy because they run in every forked child: ``nsinit`` (the zygote and its spares),
``launch`` (what the executor tells it), ``sandbox_root`` (the new root and pivot_root), ``privileges``
(capabilities, uid, no_new_privs), ``spares`` (keeping sandboxes ready), ``disk_limit`` (the workspace on a
size-limited tmpfs) and ``cgroup_join`` (whether tasks can join their cgroups here at all).

This package imports nothing on import: ``python -m ...namespace.nsinit`` must start light.
It may use what every backend shares (``executors.base``, ``cgroups``, ``seccomp``, ``linux``, ``workspace``,
``mounts``, ``logs``), never the container engines (``executors.containers``).
"""
