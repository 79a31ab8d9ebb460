"""The container-engine backends: Docker through its Engine API (``docker``), Podman through the same API on
its own socket (``podman``), isolation Container (VM with gVisor or Kata as the engine's runtime).

``spec`` turns a request into the engine's create arguments, ``pool`` keeps warm containers (it knows the
executor only through the narrow ``pool.Engine`` interface), ``cgroup`` is the per-task parent cgroup that
outlives the container (stats, OOM kills), ``output`` attaches to a container's streams and keeps their tails.
``deadline`` is the init every container runs its task under, so that it ends when its worker dies or at its
own deadline; ``busybox`` finds the static busybox that runs it and copies it where the engine can read it;
``sweep`` is what a starting worker removes.

This package imports nothing on import (the Docker SDK loads only when a backend is built). It may use what
every backend shares (``executors.base``, ``cgroups``, ``seccomp``, ``workspace``, ``logs``), never the
namespace backend (``executors.namespace``).
"""
