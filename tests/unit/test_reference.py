"""The committed field reference is what the models generate, and it leaves no field out or undescribed."""

from pathlib import Path

from pydantic import BaseModel

from expbuild_isolation.api.crd import schema_for
from expbuild_isolation.api.reference import field_rows, render_reference
from expbuild_isolation.api.task import ExecutionTaskSpec, ExecutionTaskStatus
from expbuild_isolation.cli import main

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "crd-reference.md"
REGENERATE = "expbuild-isolation crd --reference > docs/crd-reference.md"


def _model_paths(model: type[BaseModel], root: str) -> list[str]:
    """Field paths straight from the pydantic models, independent of the schema walk."""
    paths = []
    for name, info in model.model_fields.items():
        path = f"{root}.{info.alias or name}"
        paths.append(path)
        for arg in _nested_models(info.annotation):
            suffix = "[]" if _is_list(info.annotation) else ""
            paths += _model_paths(arg, path + suffix)
    return paths


def _nested_models(annotation):  # type: ignore[no-untyped-def]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _nested_models(arg)]


def _is_list(annotation) -> bool:  # type: ignore[no-untyped-def]
    return getattr(annotation, "__origin__", None) is list


def test_committed_reference_matches_the_models():
    assert REFERENCE.read_text() == render_reference(), f"docs/crd-reference.md is stale: run `{REGENERATE}`"


def test_the_cli_prints_the_reference(capsys):
    assert main(["crd", "--reference"]) == 0
    assert capsys.readouterr().out == render_reference()


def test_every_spec_and_status_field_appears():
    text = render_reference()
    for model, root in ((ExecutionTaskSpec, "spec"), (ExecutionTaskStatus, "status")):
        missing = [path for path in _model_paths(model, root) if f"| `{path}` |" not in text]
        assert not missing, f"fields missing from the reference: {missing}"


def test_every_field_has_a_description():
    rows = [*field_rows("spec", schema_for(ExecutionTaskSpec)), *field_rows("status", schema_for(ExecutionTaskStatus))]
    undescribed = [row.path for row in rows if not row.description.strip()]
    assert not undescribed, (f"add Field(description=...) in api/task.py for {undescribed}, then run "
                             f"`expbuild-isolation crd > crds/executiontask.yaml` and `{REGENERATE}`")


def test_enums_list_their_values_and_defaults_are_shown():
    text = render_reference()
    row = next(line for line in text.splitlines() if line.startswith("| `spec.network.policy` |"))
    assert "`None`, `Localhost`, `Restricted`, `Full`" in row and '`"None"`' in row
    quantity = next(line for line in text.splitlines() if line.startswith("| `spec.resources.memory` |"))
    assert "quantity" in quantity
