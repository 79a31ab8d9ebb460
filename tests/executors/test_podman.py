"""PodmanExecutor against a real Podman API service (see container_cases.py)."""

from container_cases import cases

globals().update(cases("podman"))
