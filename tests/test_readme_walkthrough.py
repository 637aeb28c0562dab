"""The README's curl walkthrough, run verbatim with bash against a live embedded server, so it cannot rot.

The block after the `<!-- walkthrough: ... -->` marker is extracted and run in a temp folder that looks like the
repository's for what the block touches (`.venv`, linked to this checkout's); `PORT` points it at the test's
server. bash runs it with `set -euo pipefail`: any failing command (an HTTP error, thanks to `--fail-with-body`),
any undefined name, fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import FAST, Stack

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- walkthrough:[^>]*-->\s*```sh\n(.*?)\n```", re.DOTALL)
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`onnx-compress serve` (api and one worker, SQLite), as `make run` starts it."""
    root = tmp_path_factory.mktemp("walkthrough")
    stack = Stack({"DATA_DIR": str(root / "data"), **FAST}, root)
    stack.start_api("serve")
    yield stack
    stack.stop()


def walkthrough() -> str:
    found = MARKER.findall((REPO / "README.md").read_text())
    assert len(found) == 1, "README.md must hold exactly one walkthrough block after its marker"
    return found[0]


def test_the_walkthrough_block_is_there_and_self_contained() -> None:
    block = walkthrough()
    assert "jq" in block and "while" in block  # ids captured with jq, a poll loop
    assert "…" not in "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("#"))


def test_readme_walkthrough_runs_verbatim(embedded_stack: Stack, tmp_path: Path) -> None:
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed: apt-get install -y jq (`make test` and .ci/run do it as root)")
    venv = Path(sys.executable).parent.parent
    (tmp_path / ".venv").symlink_to(venv)
    assert embedded_stack.api is not None and embedded_stack.api.port is not None
    env = {**os.environ, "PORT": str(embedded_stack.api.port)}
    script = "set -euo pipefail\n" + walkthrough() + "\n"
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    example = tmp_path / "example"
    job = json.loads((example / "job.json").read_text())
    assert job["status"] == "succeeded", job.get("error")
    assert job["urls"]["model"] == f"{embedded_stack.api.url}/v1/jobs/{job['id']}/artifacts/model.onnx"
    assert (example / "digits_int8.onnx").stat().st_size > 0
    assert "succeeded" in result.stdout and '"size"' in result.stdout
