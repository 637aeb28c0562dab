"""Imports point down only: onnx_compress -> app | workers -> service -> compression (contracts in pyproject.toml).

Also: every module of the repository imports on its own, so no module works only because another one was
imported first (the import-cycle bug class).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compression", "service", "app", "workers", "onnx_compress")
JOBS = 2  # the machine has 2 cores


def lint_imports() -> subprocess.CompletedProcess[str]:
    executable = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert executable, "import-linter is not installed: `make test` installs the dev extras"
    return subprocess.run(
        [executable, "--no-cache"],
        cwd=ROOT,  # reads [tool.importlinter] from pyproject.toml
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_layers_and_forbidden_imports() -> None:
    result = lint_imports()
    assert result.returncode == 0, f"an import breaks the layering:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    assert "0 broken" in result.stdout


def all_modules() -> list[str]:
    modules = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__main__" or "migrations" in parts:  # programs and Alembic scripts, not modules
                continue
            if parts[-1] == "__init__":
                parts.pop()
            modules.append(".".join(parts))
    return modules


def import_each(modules: list[str]) -> dict[str, str | None]:
    """One fresh interpreter (tests/import_probe.py) forks a child per module, two at a time."""
    command = [sys.executable, "-m", "tests.import_probe", f"--jobs={JOBS}", *modules]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"the import probe itself failed:\n{result.stderr[-4000:]}"
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {report["module"]: report["error"] for report in reports}


@pytest.mark.slow
def test_every_module_imports_on_its_own() -> None:
    modules = all_modules()
    assert len(modules) > 50 and "service.queue" in modules and "compression.pipeline" in modules
    results = import_each(modules)
    assert set(results) == set(modules), f"no report for {sorted(set(modules) - set(results))}"
    failures = {module: error for module, error in results.items() if error}
    detail = "\n\n".join(f"--- {module}\n{error.strip().splitlines()[-1]}" for module, error in failures.items())
    assert not failures, f"{len(failures)} modules fail to import on their own:\n{detail}"
