"""`onnx-compress compress` runs the engine locally, no service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "onnx_compress.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_compress_writes_model_and_metrics(digits_cnn, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"steps": [{"type": "quantize", "mode": "dynamic"}]}))
    eval_npz = tmp_path / "eval.npz"
    digits_cnn.write_npz(eval_npz, split="test")
    out, metrics = tmp_path / "out.onnx", tmp_path / "metrics.json"
    result = run_cli(
        "compress", str(digits_cnn.path), "--spec", str(spec), "--output", str(out),
        "--eval-data", str(eval_npz), "--metrics", str(metrics), "--latency-runs", "5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["size_ratio"] < 0.35 and summary["accuracy"]["drop"] <= 0.01
    assert json.loads(metrics.read_text())["output"]["size_bytes"] == out.stat().st_size
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert "step 0: quantize" in result.stderr  # progress is shown


def test_bad_spec_and_bad_data_are_explained(digits_cnn, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([{"type": "shrink"}]))
    result = run_cli("compress", str(digits_cnn.path), "--spec", str(spec), "--output", str(tmp_path / "o.onnx"))
    assert result.returncode != 0 and "valid types" in result.stderr

    spec.write_text(json.dumps([{"type": "quantize", "mode": "dynamic"}]))
    bad = tmp_path / "bad.npz"
    import numpy as np

    np.savez(bad, pixels=np.zeros((3, 64), np.float32))
    result = run_cli(
        "compress", str(digits_cnn.path), "--spec", str(spec), "--output", str(tmp_path / "o.onnx"),
        "--eval-data", str(bad),
    )  # fmt: skip
    assert result.returncode == 2 and "missing arrays for model inputs ['input']" in result.stderr


def test_steps_prints_the_schema() -> None:
    result = run_cli("steps")
    assert result.returncode == 0 and "DynamicQuantizeConfig" in result.stdout
