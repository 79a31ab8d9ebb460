"""The rendered YAML of three representative tasks, pinned.

A reviewer reads the diff of tests/kube/golden/*.yaml to see what changes for
users. Regenerate after an intended change with
``EXPBUILD_UPDATE_GOLDEN=1 python -m pytest tests/kube/test_golden.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from expbuild_isolation.kube import render
from expbuild_isolation.kube.config import OperatorConfig

from .conftest import REPRESENTATIVE, make_task

GOLDEN = Path(__file__).parent / "golden"


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and not any(line != line.rstrip() for line in value.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def rendered_yaml(name: str) -> str:
    task = make_task(name, **REPRESENTATIVE[name])
    objects = render.objects_for(task, OperatorConfig(vm_runtime_class="kata"))
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, width=120)


@pytest.mark.parametrize("name", sorted(REPRESENTATIVE))
def test_rendering_matches_the_golden_file(name):
    path = GOLDEN / f"{name}.yaml"
    text = rendered_yaml(name)
    if os.environ.get("EXPBUILD_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path} is missing; run with EXPBUILD_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{path.name} changed; review, then regenerate with EXPBUILD_UPDATE_GOLDEN=1"
