"""The import-linter contracts in pyproject.toml hold: pure layers never import the ones above."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_layers_hold():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    result = subprocess.run([lint, str(ROOT / "pyproject.toml")], cwd=ROOT / "operator",
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and "0 broken" in result.stdout


def test_a_module_past_400_lines_says_why():
    package = ROOT / "operator" / "expbuild_isolation"
    long = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 400:
            docstring = text.split('"""')[1] if text.lstrip().startswith('"""') else ""
            if "400 lines" not in docstring:
                long.append(f"{path.relative_to(package)}: {text.count(chr(10))} lines")
    assert not long, f"split these, or say in the module docstring why they run past 400 lines: {long}"
