"""A kubeconfig that points a chart's pod, run in Docker, at the KMock emulator (test_agent_pod, test_operator_pod).

A real pod gets its service account instead; these tests use the only thing the emulator can offer.
World-readable: the pods run as a non-root user that must read the file bind-mounted into them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def write_kubeconfig(kmock: Any, directory: Path) -> Path:
    path = directory / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "kmock", "user": {"token": "not-checked"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}]}))
    path.chmod(0o644)
    return path
