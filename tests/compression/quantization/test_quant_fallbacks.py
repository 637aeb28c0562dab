"""onnxruntime's quantizer crashes: known bugs worked around, unknown ones retried on less prepared graphs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
from quant_helpers import feeds_dataset, run_step, save

from compression.datasets import DatasetBundle
from compression.metrics.inference import make_session
from compression.quantization import modes, preprocess

RNG = np.random.default_rng(11)


def jax_style_classifier(path: Path) -> Path:
    """Two Gemm layers whose biases have the broadcast shapes jax2onnx/tf2onnx write: [1, N] and [1]."""

    def init(name: str, array: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(array.astype(np.float32), name)

    nodes = [
        helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name="dense1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "W2", "B2"], ["logits"], transB=1, name="dense2"),
    ]
    graph = helper.make_graph(
        nodes,
        "jax_style",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [
            init("W1", RNG.standard_normal((32, 64)) * 0.2),
            init("B1", RNG.standard_normal((1, 64)) * 0.1),
            init("W2", RNG.standard_normal((10, 64)) * 0.2),
            init("B2", np.array([0.05])),
        ],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


class _Reader(CalibrationDataReader):
    def __init__(self, x: np.ndarray) -> None:
        self.feeds = iter([{"x": x}])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def _data(src: Path) -> DatasetBundle:
    x = RNG.standard_normal((256, 32)).astype(np.float32)
    return DatasetBundle(calibration=feeds_dataset({"x": x[:128]}, src), eval=feeds_dataset({"x": x[128:]}, src))


def test_onnxruntime_alone_crashes_on_broadcast_gemm_biases(tmp_path):
    src = jax_style_classifier(tmp_path / "jax.onnx")
    x = RNG.standard_normal((64, 32)).astype(np.float32)
    with pytest.raises(ValueError, match="truth value of an array"):
        quantize_static(str(src), str(tmp_path / "q.onnx"), _Reader(x), quant_format=QuantFormat.QDQ, per_channel=True)


@pytest.mark.parametrize("float_bias", [True, False])
def test_broadcast_gemm_biases_quantize_on_the_prepared_graph(tmp_path, float_bias):
    src = jax_style_classifier(tmp_path / "jax.onnx")
    step = {"type": "quantize", "mode": "static", "per_channel": True, "float_bias": float_bias, "speed_guard": False}
    result, recorder = run_step(src, step, _data(src), tmp_path / "work")
    details = result.metrics.steps[0].details
    assert not details["input_model_returned"], details.get("reason")
    assert details["quantizer_path"] == "prepared" and "quantizer_failures" not in details
    assert details["gemm_biases_flattened"] == 2
    assert "quantizer failed" not in recorder.text()
    x = RNG.standard_normal((4, 32)).astype(np.float32)
    assert make_session(result.model_path).run(None, {"x": x})[0].shape == (4, 10)


def test_a_quantizer_crash_retries_without_our_preprocessing(tmp_path, monkeypatch):
    """A crash on the prepared graphs falls back to the graph as uploaded; the metrics say which one worked."""
    src = jax_style_classifier(tmp_path / "jax.onnx")
    real = modes.quantize_static
    seen: list[str] = []

    def crashes_on_prepared(model_input, *args, **kwargs):
        seen.append(Path(model_input).parent.name)
        if Path(model_input).parent.name in ("prep", "fallback_without_preprocessing"):
            raise ValueError("The truth value of an array with more than one element is ambiguous")
        return real(model_input, *args, **kwargs)

    monkeypatch.setattr(modes, "quantize_static", crashes_on_prepared)
    step = {"type": "quantize", "mode": "static", "speed_guard": False}
    result, recorder = run_step(src, step, _data(src), tmp_path / "work")
    details = result.metrics.steps[0].details
    assert not details["input_model_returned"], details.get("reason")
    assert details["quantizer_path"] == "raw_graph"
    assert [failure["graph"] for failure in details["quantizer_failures"]] == ["prepared", "without_preprocessing"]
    assert "retrying the quantizer on the graph as uploaded" in recorder.text()
    assert result.metrics.fidelity.outputs["logits"].cosine > 0.98
    assert seen.count("prep") == 1, "once a graph crashed, later attempts start from the one that worked"


def test_every_graph_crashing_returns_the_input_with_the_reason(tmp_path, monkeypatch):
    src = jax_style_classifier(tmp_path / "jax.onnx")

    def always_crashes(*args, **kwargs):
        raise RuntimeError("quantizer bug")

    monkeypatch.setattr(modes, "quantize_static", always_crashes)
    result, _ = run_step(src, {"type": "quantize", "mode": "static", "speed_guard": False}, _data(src), tmp_path)
    details = result.metrics.steps[0].details
    assert details["input_model_returned"] and "quantizer bug" in details["reason"]
    assert len(details["quantizer_failures"]) == 4


def test_preprocess_leaves_no_files_in_the_working_directory(tmp_path, monkeypatch):
    """onnxruntime's symbolic shape inference writes sym_shape_infer_temp.onnx into the cwd when it gives up."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def gives_up(src, dst, **kwargs):
        Path("sym_shape_infer_temp.onnx").write_bytes(b"stray")
        raise Exception("Incomplete symbolic shape inference")

    monkeypatch.setattr(preprocess, "quant_pre_process", gives_up)
    src = jax_style_classifier(tmp_path / "jax.onnx")
    messages: list[str] = []
    assert preprocess.preprocess(src, tmp_path / "work" / "pre.onnx", messages.append) == src.resolve()
    assert os.listdir(cwd) == [] and Path.cwd() == cwd
    assert (tmp_path / "work" / "preprocess_scratch" / "sym_shape_infer_temp.onnx").is_file()
    assert "quantizing without pre-processing" in messages
