"""``pip install 'expbuild-isolation[reapi]'`` is all the REAPI worker needs.

Every module the worker takes from outside the standard library (``worker/reapi/protos.py`` is where
they all come in) must be installed by a distribution that the ``reapi`` extra or the package's own
dependencies bring, directly or through their dependencies: nothing installed by hand, as BuildGrid
once had to be (``--no-deps``). The fresh-venv install itself needs the network, so it is checked
when the extra changes, not here.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path
from types import ModuleType

from expbuild_isolation.worker.reapi import protos as reapi_protos

ROOT = Path(__file__).resolve().parents[2]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return canonical(re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0))


def brought_by(requirements: list[str]) -> set[str]:
    """The distributions these requirements install: themselves and, recursively, what they require."""
    seen: set[str] = set()
    todo = [requirement_name(r) for r in requirements]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue   # not for this platform (e.g. pywin32), so not installed here
        seen.add(name)
        for requirement in requires:
            if not re.search(r";.*\bextra\b", requirement):   # an optional extra's: not brought
                todo.append(requirement_name(requirement))
    return seen


def files_of(names: set[str]) -> set[Path]:
    """Every file that these installed distributions installed."""
    return {Path(importlib.metadata.distribution(name).locate_file(file)).resolve()
            for name in names for file in importlib.metadata.distribution(name).files or []}


def owner_of(path: Path) -> str:
    """The distribution that installed this file (only asked when it is not one we expect: slow)."""
    for dist in importlib.metadata.distributions():
        if any(Path(dist.locate_file(file)).resolve() == path for file in dist.files or []):
            return dist.metadata["Name"]
    return "no distribution"


def test_every_module_the_worker_imports_comes_with_the_reapi_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    allowed = brought_by(project["optional-dependencies"]["reapi"] + project["dependencies"])
    installed = files_of(allowed)
    modules = [getattr(reapi_protos, name) for name in reapi_protos.__all__]
    assert all(isinstance(module, ModuleType) for module in modules)
    for module in modules:
        path = Path(module.__file__).resolve()
        assert path in installed, (f"{module.__name__} comes from {owner_of(path)}, which "
                                   f"`pip install .[reapi]` does not bring (it brings {sorted(allowed)})")
