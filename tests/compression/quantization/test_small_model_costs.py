"""Fixed costs of `auto` that small models used to pay: torch imported by onnxruntime's tools package."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_preprocess_does_not_import_torch(digits_cnn, tmp_path):
    """quant_pre_process's symbolic inference no longer pulls in torch via onnxruntime/tools/__init__.py."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from compression.quantization.preprocess import preprocess
        out = preprocess(Path({str(digits_cnn.path)!r}), Path({str(tmp_path / "pre.onnx")!r}), lambda m: None)
        assert out.is_file()
        loaded = "torch" in sys.modules
        import onnxruntime.tools
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
        assert onnxruntime.tools.have_torch is not None and callable(onnxruntime.tools.infer_input_info)
        print("torch imported:", loaded)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch imported: False" in done.stdout
