"""Fast bias correction after static QDQ quantization, on convs built here and on the residual CNN."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
from quant_helpers import bundle, run_step, save

from compression.datasets import Dataset
from compression.metrics.inference import make_session
from compression.model_info import inspect_model
from compression.quantization.bias_correction import BiasCorrector, find_sites
from compression.quantization.calibration import DatasetReader

CHANNELS_IN, CHANNELS_OUT = 8, 16


def conv_model(with_bias: bool, seed: int = 0) -> onnx.ModelProto:
    """x[N,8,10,10] -> Conv 3x3 pad 1 (16 channels) -> Relu -> y; weights with a positive skew per channel."""
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((CHANNELS_OUT, CHANNELS_IN, 3, 3)) * 0.3 + 0.05).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "W")]
    inputs = ["x", "W"]
    if with_bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(CHANNELS_OUT).astype(np.float32) * 0.1, "B"))
        inputs.append("B")
    nodes = [
        helper.make_node("Conv", inputs, ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", CHANNELS_IN, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", CHANNELS_OUT, 10, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def positive_inputs(n: int, seed: int) -> np.ndarray:
    """Post-ReLU-like activations: all positive, so weight rounding errors do not cancel in the mean."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, CHANNELS_IN, 10, 10)).astype(np.float32)


def conv_output_mean_error(float_path: Path, quant_path: Path, x: np.ndarray) -> float:
    """Mean over channels of |mean float conv output - mean quantized conv output| (pre-ReLU)."""
    means = []
    for path in (float_path, quant_path):
        model = onnx.load(str(path))
        conv = next(node for node in model.graph.node if node.op_type == "Conv")
        model.graph.output.append(onnx.ValueInfoProto(name=conv.output[0]))
        tapped = path.with_name(f"tapped_{path.name}")
        onnx.save(model, str(tapped))
        value = make_session(tapped).run([conv.output[0]], {"x": x})[0]
        means.append(value.mean(axis=(0, 2, 3)))
    return float(np.mean(np.abs(means[0] - means[1])))


def quantize_per_tensor(src: Path, dst: Path, data: Dataset) -> None:
    """Per-tensor int8 weights: coarse enough that the rounding error shifts every channel's mean."""
    quantize_static(
        str(src),
        str(dst),
        DatasetReader(data, data.n_samples),
        quant_format=QuantFormat.QDQ,
        per_channel=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"QuantizeBias": False},
    )


def corrected_case(tmp_path: Path, with_bias: bool) -> tuple[Path, Path, Path, Dataset, np.ndarray]:
    src = save(conv_model(with_bias), tmp_path / "conv.onnx")
    calibration = Dataset.bind({"x": positive_inputs(128, seed=1)}, inspect_model(src).inputs)
    quantized = tmp_path / "quantized.onnx"
    quantize_per_tensor(src, quantized, calibration)
    corrected = tmp_path / "corrected.onnx"
    shutil.copy(quantized, corrected)
    return src, quantized, corrected, calibration, positive_inputs(64, seed=2)


def test_bias_correction_reduces_the_per_channel_mean_error_of_a_quantized_conv(tmp_path):
    src, quantized, corrected, calibration, held_out = corrected_case(tmp_path, with_bias=True)
    report = BiasCorrector(calibration, 128, 1, tmp_path / "bc").apply(src, corrected)
    assert report.nodes_corrected == 1 and report.kept
    assert report.output_error_after < report.output_error_before
    before = conv_output_mean_error(src, quantized, held_out)  # held-out inputs: not the correction's samples
    after = conv_output_mean_error(src, corrected, held_out)
    assert before > 0
    assert after < 0.5 * before  # measured 0.02x; the margin covers other seeds and kernels
    # the bias stays a float initializer the Conv reads directly (float_bias)
    model = onnx.load(str(corrected))
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    assert conv.input[2] in {init.name for init in model.graph.initializer}


def test_a_conv_without_bias_gets_one(tmp_path):
    src, quantized, corrected, calibration, held_out = corrected_case(tmp_path, with_bias=False)
    report = BiasCorrector(calibration, 128, 1, tmp_path / "bc").apply(src, corrected)
    assert report.nodes_corrected == 1 and report.kept
    conv = next(node for node in onnx.load(str(corrected)).graph.node if node.op_type == "Conv")
    assert len(conv.input) == 3 and conv.input[2]
    assert conv_output_mean_error(src, corrected, held_out) < 0.5 * conv_output_mean_error(src, quantized, held_out)


def test_unquantized_nodes_are_not_sites(tmp_path):
    """A conv the quantizer left float has no dequantized weight: nothing to correct."""
    src = save(conv_model(True), tmp_path / "conv.onnx")
    calibration = Dataset.bind({"x": positive_inputs(32, seed=1)}, inspect_model(src).inputs)
    quantized = tmp_path / "q.onnx"
    quantize_static(
        str(src),
        str(quantized),
        DatasetReader(calibration, 32),
        quant_format=QuantFormat.QDQ,
        nodes_to_exclude=["conv"],
        extra_options={"QuantizeBias": False},
    )
    sites, _ = find_sites(onnx.load(str(quantized)), onnx.load(str(src)))
    assert sites == []


def test_static_step_records_bias_correction(residual_cnn, tmp_path):
    step = {"type": "quantize", "mode": "static", "speed_guard": False}
    result, _ = run_step(residual_cnn.path, step, bundle(residual_cnn), tmp_path)
    details = result.metrics.steps[0].details
    report = details["bias_correction"]
    assert report["nodes_corrected"] >= 5  # the residual CNN's convs (BatchNorm folded into their biases) and fc
    if report["kept"]:
        assert report["output_error_after"] < report["output_error_before"]
    assert details["within_budget"]
