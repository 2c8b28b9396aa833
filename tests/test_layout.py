"""The project's shape: no module shadows a standard-library name, the library imports no
orchestration, and the commands that need no orchestration import none."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sentio_core.codeversion import third_party_imports

from .conftest import REPO, SMOKE

PACKAGES = ("sentio_core", "tasks", "flows", "sentio")


def _modules(package: str) -> list[str]:
    return sorted(p.stem for p in (REPO / package).glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_shadows_a_standard_library_module(package):
    assert [m for m in _modules(package) if m in sys.stdlib_module_names] == []


def test_the_library_imports_no_prefect_and_mlflow_only_in_the_registry():
    for module in _modules("sentio_core"):
        libraries = third_party_imports(REPO, f"sentio_core.{module}")
        assert "prefect" not in libraries, module
        assert ("mlflow" in libraries) == (module == "registry"), module


def test_folds_features_and_validate_run_without_prefect_or_mlflow(tmp_path):
    """Each command runs for real in a fresh interpreter, which then holds no Prefect or MLflow module."""
    script = f"""
import sys
from sentio.cli import main
assert main(["folds", "--config", {str(SMOKE)!r}]) == 0
assert main(["features", "--config", {str(SMOKE)!r}, "--out", {str(tmp_path / "f.parquet")!r}]) == 0
assert main(["validate", {str(REPO / "data" / "daily")!r}]) == 0
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "mlflow", "tasks", "flows"))
print("LOADED", loaded)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout, proc.stdout[-2000:]
    assert (tmp_path / "f.parquet").is_file()
