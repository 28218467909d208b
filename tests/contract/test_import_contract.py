"""The import contract: services independent, libs below services, no dev-only imports in product code, no cycles."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from stack.config import REPO

SERVICES = ("collection", "customers", "workorders", "readside", "vee", "exchange")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert binary is not None, "import-linter is part of the dev dependencies"
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([binary], cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False)


def skeleton(root: Path) -> Path:
    """An empty copy of the repository's package layout with its import-linter settings."""
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    (root / "libs").mkdir()
    (root / "libs" / "__init__.py").write_text("")
    (root / "services").mkdir()
    (root / "services" / "__init__.py").write_text("")
    for name in SERVICES:
        (root / "services" / name).mkdir()
        (root / "services" / name / "__init__.py").write_text("")
    for package in ("ops", "stack", "bench"):
        (root / package).mkdir()
        (root / package / "__init__.py").write_text("")
        (root / package / "config.py").write_text("")
    return root


def test_the_repository_keeps_the_contract() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_service_importing_another_service_breaks_the_build(tmp_path: Path) -> None:
    skeleton(tmp_path)
    (tmp_path / "services" / "workorders" / "adapters.py").write_text("from services.customers import domain\n")
    (tmp_path / "services" / "customers" / "domain.py").write_text("")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "A service never imports another service BROKEN" in result.stdout
    assert "services.workorders.adapters -> services.customers" in result.stdout


def test_a_lib_importing_a_service_breaks_the_build(tmp_path: Path) -> None:
    skeleton(tmp_path)
    (tmp_path / "libs" / "helpers.py").write_text("import services.readside\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "libs never import services BROKEN" in result.stdout


def test_product_code_importing_the_dev_stack_breaks_the_build(tmp_path: Path) -> None:
    # Even lazily, inside a function: the wheel and the image carry no stack/, so the import fails at run time.
    skeleton(tmp_path)
    (tmp_path / "ops" / "cli.py").write_text("def main():\n    from stack.config import REPO\n")
    (tmp_path / "services" / "collection" / "devices.py").write_text("import bench.config\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "Product code never imports dev-only code" in result.stdout
    assert "ops.cli -> stack.config" in result.stdout
    assert "services.collection.devices -> bench.config" in result.stdout


def test_the_dev_stack_may_import_product_code(tmp_path: Path) -> None:
    skeleton(tmp_path)
    (tmp_path / "stack" / "run.py").write_text("import ops.config\nimport services.collection\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_import_cycle_inside_a_service_breaks_the_build(tmp_path: Path) -> None:
    skeleton(tmp_path)
    (tmp_path / "services" / "workorders" / "app.py").write_text("from services.workorders import openapi\n")
    (tmp_path / "services" / "workorders" / "openapi.py").write_text("from services.workorders import app\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "No import cycles between the modules of one package BROKEN" in result.stdout
    assert "services.workorders" in result.stdout
