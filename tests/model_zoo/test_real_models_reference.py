"""The real-model bench's reference path (plain quantize_static + one engine latency comparison) on a tiny model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.real_models import ModelResult, Status, merge, run_reference


def tiny_conv(path: Path) -> Path:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 16, 16])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def test_reference_times_quantize_static_and_one_latency_comparison(tmp_path: Path) -> None:
    source = tiny_conv(tmp_path / "tiny.onnx")
    work = tmp_path / "tiny"
    work.mkdir()
    rng = np.random.default_rng(1)
    np.savez(work / "calibration.npz", x=rng.random((8, 3, 16, 16), dtype=np.float32))
    np.savez(work / "eval.npz", x=rng.random((8, 3, 16, 16), dtype=np.float32))
    result = ModelResult("tiny", Status.CLEAN, wall_s=1.0)
    run_reference(source, work, result, argparse.Namespace(timeout=120.0, max_rss_mb=8000.0))
    assert result.ref_note == ""
    assert result.ref_s is not None and result.ref_quantize_s is not None and result.ref_latency_s is not None
    assert result.ref_s > 0 and result.wall_per_ref is not None
    assert result.ref_latency_ratio is not None and result.ref_latency_ratio > 0
    assert (work / "reference_static.onnx").is_file()


def test_merge_reads_results_written_before_the_reference_columns(tmp_path: Path, capsys) -> None:
    old = {"load_start": "load 1.0", "load_end": "load 1.0", "results": [{"name": "m", "status": "changed&clean"}]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    merge([tmp_path / "old.json"])
    out = capsys.readouterr().out
    assert "| m |" in out and "within 3x ref 0 (of 0 with a reference)" in out
