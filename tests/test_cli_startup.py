"""`onnx-compress` loads the engine and the HTTP client only for the commands that use them: `--help`, `migrate`,
`api`, `worker`, `tenants`, `keys` start without onnx, onnxruntime, numpy, torch or httpx being imported by the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from onnx_compress.cli import LAZY_COMMANDS, LazyCommand, cli, load_command

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("onnx", "onnxruntime", "numpy", "torch", "httpx", "compression.pipeline", "onnx_compress.client")


def modules_loaded_by(code: str) -> set[str]:
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_the_cli_module_imports_no_engine_and_no_client() -> None:
    loaded = modules_loaded_by("import onnx_compress.cli")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_help_lists_every_command_without_loading_the_lazy_ones() -> None:
    code = (
        "from typer.testing import CliRunner\nfrom onnx_compress.cli import cli\n"
        "result = CliRunner().invoke(cli, ['--help'], terminal_width=200)\n"
        "assert result.exit_code == 0, result.output\n"
        f"assert all(name in result.output for name in {sorted(LAZY_COMMANDS)!r}), result.output"
    )
    loaded = modules_loaded_by(code)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_a_lazy_commands_help_line_is_its_own(name: str) -> None:
    assert LazyCommand(name).help == load_command(name).help


def test_lazy_commands_run() -> None:
    runner = CliRunner()
    steps = runner.invoke(cli, ["steps"])
    assert steps.exit_code == 0, steps.output
    assert "DynamicQuantizeConfig" in json.loads(steps.output)["$defs"]
    jobs = runner.invoke(cli, ["jobs", "--help"], terminal_width=200)
    assert jobs.exit_code == 0 and "download" in jobs.output, jobs.output
    compress = runner.invoke(cli, ["compress", "--help"], terminal_width=200)
    assert compress.exit_code == 0 and "--spec" in compress.output, compress.output
