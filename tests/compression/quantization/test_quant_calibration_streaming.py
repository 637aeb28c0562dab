"""Calibration in chunks gives the ranges onnxruntime computes over all samples at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationMethod
from onnxruntime.quantization.calibrate import create_calibrator, load_tensors_data
from quant_helpers import save

from compression.datasets import Dataset
from compression.model_info import inspect_model
from compression.quantization.activations import activation_bytes_per_sample
from compression.quantization.calibration import HISTOGRAM_COPIES, DatasetReader, calibrate, plan_calibration

RNG = np.random.default_rng(5)
SAMPLES = 40


def _cnn(path: Path) -> Path:
    w1 = (RNG.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (RNG.standard_normal((4, 8, 3, 3)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4, name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1] * 4, name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16, 16])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _data(src: Path) -> Dataset:
    x = RNG.standard_normal((SAMPLES, 3, 16, 16)).astype(np.float32)
    x[-3:] *= 20.0  # the widest values come in the last chunk: merged histograms must not lose them
    return Dataset.bind({"x": x}, inspect_model(src).inputs)


def _reference(src: Path, data: Dataset, method: CalibrationMethod, work: Path) -> dict:
    calibrator = create_calibrator(src, None, augmented_model_path=str(work / "ref.onnx"), calibrate_method=method)
    calibrator.collect_data(DatasetReader(data, SAMPLES, SAMPLES))  # one feed: onnxruntime stacks them
    return {
        name: tuple(float(np.asarray(v).reshape(-1)[0]) for v in t.range_value)
        for name, t in calibrator.compute_data().items()
    }


def test_activation_bytes_are_measured_per_sample(tmp_path):
    src = _cnn(tmp_path / "cnn.onnx")
    data = _data(src)
    one = activation_bytes_per_sample(src, data.take(1).first_feed(1), 1, tmp_path)
    four = activation_bytes_per_sample(src, data.take(4).first_feed(4), 4, tmp_path)
    assert one == four == (8 * 16 * 16 * 2 + 4 * 16 * 16) * 4  # c1, r1 and y, float32


@pytest.mark.parametrize(
    ("method", "tolerance"),
    [(CalibrationMethod.MinMax, 0.0), (CalibrationMethod.Entropy, 1e-6), (CalibrationMethod.Percentile, 0.02)],
)
def test_chunked_calibration_matches_one_pass(tmp_path, method, tolerance):
    src = _cnn(tmp_path / "cnn.onnx")
    data = _data(src)
    per_sample = activation_bytes_per_sample(src, data.take(1).first_feed(1), 1, tmp_path)
    budget = per_sample * 8 * (HISTOGRAM_COPIES if method != CalibrationMethod.MinMax else 1)
    plan = plan_calibration(src, data, SAMPLES, method, budget, tmp_path / "plan")
    if method != CalibrationMethod.MinMax:
        assert plan.chunk == 8 and plan.chunks == 5 and plan.batch == 8
    else:
        assert plan.batch == 8
    cache = tmp_path / "ranges.json"
    calibrate(src, data, plan, method, None, tmp_path / "calibrate", cache)
    streamed = {
        name: tuple(float(np.asarray(v).reshape(-1)[0]) for v in t.range_value)
        for name, t in load_tensors_data(cache).items()
    }
    reference = _reference(src, data, method, tmp_path)
    assert streamed.keys() == reference.keys()
    for name, (low, high) in reference.items():
        scale = max(abs(low), abs(high), 1e-6)
        assert abs(streamed[name][0] - low) <= tolerance * scale + 1e-6, name
        assert abs(streamed[name][1] - high) <= tolerance * scale + 1e-6, name
