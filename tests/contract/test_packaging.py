"""The wheel is the product: built, installed in a fresh virtualenv, and run from outside the checkout.

Catches what the import contract cannot: a module or data file that exists only in the checkout (the dev stack,
a contract read at run time), a dependency that is only a dev dependency, an entry point that does not start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from stack.config import REPO

SERVICES = ("collection", "customers", "workorders", "readside", "vee")


def _uv() -> str:
    found = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    assert Path(found).exists(), "uv is installed by make deps"
    return found


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the python of a fresh virtualenv with the wheel and its locked runtime dependencies)."""
    root = tmp_path_factory.mktemp("packaging")
    uv = _uv()
    _run(uv, "build", "--wheel", "--out-dir", str(root / "dist"), "--quiet", cwd=REPO)
    (wheel,) = (root / "dist").glob("gridhub-*.whl")
    requirements = root / "requirements.txt"
    _run(
        uv, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "--quiet",
        "--output-file", str(requirements), cwd=REPO,
    )  # fmt: skip
    venv = root / "venv"
    _run(uv, "venv", "--quiet", "--python", sys.executable, str(venv), cwd=root)
    python = venv / "bin" / "python"
    _run(uv, "pip", "install", "--quiet", "--python", str(python), "-r", str(requirements), str(wheel), cwd=root)
    return wheel, python


def _outside(python: Path) -> dict[str, str]:
    """An environment that cannot see the checkout: no PYTHONPATH, no uv project, the venv's own scripts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "UV_", "GRIDHUB_"))}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_the_wheel_holds_the_product_and_nothing_dev_only(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"libs", "services", "ops", "contracts", "gridhub-0.1.0.dist-info"}
    assert "contracts/wsdl/customers.wsdl" in names
    for service in SERVICES:
        assert f"services/{service}/__main__.py" in names
        assert any(name.startswith(f"services/{service}/migrations/") for name in names)


def test_gridhub_runs_from_the_installed_wheel(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, python = installed
    for command_line in ([str(python.parent / "gridhub")], [str(python), "-m", "ops"]):
        output = _run(*command_line, "--help", cwd=tmp_path, env=_outside(python))
        for command in ("device", "apikey", "ftpuser", "lag", "dlq", "rebuild"):
            assert command in output


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_starts_its_command_line_from_the_installed_wheel(
    installed: tuple[Path, Path], tmp_path: Path, service: str
) -> None:
    _, python = installed
    env = _outside(python)
    assert "--check-settings" in _run(str(python), "-m", f"services.{service}", "--help", cwd=tmp_path, env=env)
    checked = _run(str(python), "-m", f"services.{service}", "--check-settings", cwd=tmp_path, env=env)
    assert f"{service}: settings are valid" in checked


def test_the_contracts_read_at_run_time_are_found_in_the_installed_wheel(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, python = installed
    probe = (
        "import services, sys\n"
        "from services.workorders.adapters.customers_soap import WSDL_PATH\n"
        "assert 'site-packages' in WSDL_PATH.as_posix() and WSDL_PATH.is_file(), WSDL_PATH\n"
        "print(WSDL_PATH.read_text().count('wsdl:operation'))\n"
    )
    count = _run(str(python), "-c", probe, cwd=tmp_path, env=_outside(python))
    assert int(count) > 0
