"""SmoothQuant folding, per-tensor activation ranges and the u8s8 saturation guard (reduce_range)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import TensorData, TensorsData, load_tensors_data, save_tensors_data
from quant_helpers import bundle, run_step, save

from compression.datasets import Dataset
from compression.metrics.inference import make_session, run_dataset
from compression.model_info import inspect_model
from compression.quantization.activation_ranges import best_range, refine_ranges
from compression.quantization.calibration import DatasetReader
from compression.quantization.saturation import reduce_range, u8s8_may_saturate
from compression.quantization.smooth_quant import smooth
from compression.settings import EngineSettings, ReduceRange

D, HIDDEN, OUT, T = 64, 64, 8, 16


def norm_matmul_model(outlier_gain: float) -> onnx.ModelProto:
    """x -> LayerNorm (a few channels scaled by `outlier_gain`) -> MatMul -> Relu -> MatMul -> y."""
    rng = np.random.default_rng(0)
    gamma = np.ones(D, np.float32)
    gamma[[3, 17, 40]] = outlier_gain
    inits = [
        numpy_helper.from_array(gamma, "gamma"),
        numpy_helper.from_array(np.zeros(D, np.float32), "beta"),
        numpy_helper.from_array((rng.standard_normal((D, HIDDEN)) / np.sqrt(D)).astype(np.float32), "W1"),
        numpy_helper.from_array((rng.standard_normal((HIDDEN, OUT)) / np.sqrt(HIDDEN)).astype(np.float32), "W2"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1),
        helper.make_node("MatMul", ["h", "W1"], ["a"], name="fc1"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "norm_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", T, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", T, OUT])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def dataset_for(path: Path, n: int = 256) -> Dataset:
    x = np.random.default_rng(1).standard_normal((n, T, D)).astype(np.float32)
    return Dataset.bind({"x": x}, inspect_model(path).inputs)


def static_error(path: Path, reference: np.ndarray, data: Dataset, tmp: Path) -> float:
    quantized = tmp / f"{path.stem}_int8.onnx"
    quantize_static(
        str(path),
        str(quantized),
        DatasetReader(data, data.n_samples),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"QuantizeBias": False},
    )
    got = run_dataset(make_session(quantized), data, 64)["y"]
    return float(np.sum((got - reference) ** 2) / np.sum(reference**2))


def test_smooth_quant_keeps_the_float_model_and_cuts_the_int8_error_on_outlier_channels(tmp_path):
    src = save(norm_matmul_model(outlier_gain=60.0), tmp_path / "m.onnx")
    data = dataset_for(src)
    report = smooth(src, tmp_path / "smoothed.onnx", data, 0.5, 8.0, 32, 1, tmp_path / "work")
    assert report is not None and report.layer_norms == 1 and report.matmuls == 1
    assert report.max_outlier_ratio > 8
    reference = run_dataset(make_session(src), data, 64)["y"]
    smoothed = run_dataset(make_session(tmp_path / "smoothed.onnx"), data, 64)["y"]
    np.testing.assert_allclose(smoothed, reference, rtol=1e-4, atol=1e-4)  # an equivalent float graph
    plain = static_error(src, reference, data, tmp_path)
    after = static_error(tmp_path / "smoothed.onnx", reference, data, tmp_path)
    assert after < 0.6 * plain  # measured 0.28x


def test_smooth_quant_leaves_activations_without_outliers_alone(tmp_path):
    src = save(norm_matmul_model(outlier_gain=1.0), tmp_path / "m.onnx")
    report = smooth(src, tmp_path / "smoothed.onnx", dataset_for(src), 0.5, 8.0, 32, 1, tmp_path / "work")
    assert report is not None and report.layer_norms == 0
    assert not (tmp_path / "smoothed.onnx").exists()


def test_best_range_clips_a_lone_outlier_and_keeps_mass_at_the_ends():
    edges = np.linspace(-1.0, 100.0, 2049)
    bulk = np.zeros(2048)
    bulk[:40] = 100_000.0  # 4M values in [-1, 1]
    bulk[-1] = 1.0  # one value near 100: clipping it costs less than rounding the bulk 50x more coarsely
    lo, hi, ratio = best_range(bulk, edges)
    assert hi < 50.0 and ratio < 0.5
    extremes = np.zeros(2048)
    extremes[[0, -1]] = 1000.0  # all the mass at both ends: any clipping costs more than it saves
    lo, hi, ratio = best_range(extremes, edges)
    assert (lo, hi) == (-1.0, 100.0) and ratio == 1.0


def test_refine_ranges_rewrites_the_cache_once_and_protects_outputs(tmp_path):
    src = save(norm_matmul_model(outlier_gain=60.0), tmp_path / "m.onnx")
    data = dataset_for(src, 64)
    values = run_dataset(make_session(src), data, 64)["y"]
    cache = tmp_path / "calibration_ranges.json"
    ranges = {"h": (-200.0, 200.0), "y": (float(values.min()), float(values.max()))}  # h: far wider than needed
    data_map = {
        name: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
        for name, (lo, hi) in ranges.items()
    }
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data_map), cache)
    report = refine_ranges(cache, src, data, 32, 1, tmp_path / "work")
    assert report is not None and report.clipped == 1 and report.protected == 1
    refined = load_tensors_data(cache)
    low, high = (float(np.asarray(v).reshape(-1)[0]) for v in refined["h"].range_value)
    assert low > -200.0 and high < 200.0
    assert tuple(float(np.asarray(v).reshape(-1)[0]) for v in refined["y"].range_value) == ranges["y"]
    assert refine_ranges(cache, src, data, 32, 1, tmp_path / "work") is None  # already refined


def test_saturation_guard_reads_the_cpu_flags():
    assert u8s8_may_saturate("x86_64", "flags\t: fpu sse avx2 fma\n") is True
    assert u8s8_may_saturate("x86_64", "flags\t: fpu avx2 avx512f avx512_vnni\n") is False
    assert u8s8_may_saturate("x86_64", "flags\t: fpu avx2 avx_vnni\n") is False
    assert u8s8_may_saturate("aarch64", "Features\t: fp asimd asimddp\n") is False
    assert reduce_range(EngineSettings(quantize={"reduce_range": ReduceRange.ALWAYS})) is True
    assert reduce_range(EngineSettings(quant_reduce_range="never")) is False


def test_static_step_refines_the_calibration_ranges_once(digits_cnn, tmp_path):
    step = {"type": "quantize", "mode": "static", "speed_guard": False}
    result, _ = run_step(digits_cnn.path, step, bundle(digits_cnn), tmp_path)
    details = result.metrics.steps[0].details
    ranges = details["activation_ranges"]
    assert ranges["tensors"] > 0 and ranges["protected"] >= 1  # the logits keep their min-max range
    assert details["within_budget"] and not details["input_model_returned"]
