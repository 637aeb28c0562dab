"""Static int8 speed on x86: Conv input channels padded for onnxruntime's direct int8 kernel, and the
measured choice between the Conv layouts (static_variants.py). Behaviour only: which layout is fastest is
the bench's business (docs/quantization.md "Static int8 speed on x86")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from quant_helpers import bundle, run_step

import compression.quantization.static_variants as static_variants
from compression.metrics.latency import LatencyStats
from compression.quantization.conv_channel_pad import pad_conv_channels
from compression.settings import EngineSettings

RNG = np.random.default_rng(0)


def _init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


def qdq_conv_model(
    in_channels: int = 3, group: int = 1, weight_zero_point: int = 0, body_reads_input: bool = False
) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv (int8 per-channel weights via DQ) -> Q -> DQ -> y; optionally an If body reads the input DQ."""
    out_channels = 8
    # 7-bit weights, as the engine quantizes on x86 without VNNI (saturation.py): there onnxruntime's u8s8 kernel
    # adds pairs of products into a saturating int16, and padding channels changes which products pair up
    weight = RNG.integers(-64, 64, (out_channels, in_channels // group, 3, 3)).astype(np.int8)
    inits = [
        _init("x_scale", np.array(0.02, np.float32)),
        _init("x_zp", np.array(128, np.uint8)),
        _init("w_q", weight),
        _init("w_scale", RNG.uniform(0.001, 0.01, out_channels).astype(np.float32)),
        _init("w_zp", np.full(out_channels, weight_zero_point, np.int8)),
        _init("bias", RNG.standard_normal(out_channels).astype(np.float32)),
        _init("y_scale", np.array(0.05, np.float32)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="q_x"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=0),
        helper.make_node("Conv", ["x_dq", "w", "bias"], ["conv"], name="stem", pads=[1, 1, 1, 1], group=group),
        helper.make_node("QuantizeLinear", ["conv", "y_scale", "x_zp"], ["y_q"], name="q_y"),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "x_zp"], ["y"], name="dq_y"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 6, 6])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, in_channels, 6, 6])]
    if body_reads_input:
        body = helper.make_graph(
            [helper.make_node("Identity", ["x_dq"], ["branch"], name="body_identity")],
            "branch",
            [],
            [helper.make_tensor_value_info("branch", TensorProto.FLOAT, [2, 3, 6, 6])],
        )
        nodes.append(helper.make_node("If", ["flag"], ["z"], name="if", then_branch=body, else_branch=body))
        inputs.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, []))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3, 6, 6]))
    graph = helper.make_graph(nodes, "qdq_conv", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("in_channels", [1, 3, 6])
def test_padding_is_exact(in_channels):
    model = qdq_conv_model(in_channels)
    feeds = {"x": RNG.standard_normal((2, in_channels, 6, 6)).astype(np.float32)}
    before = _run(model, feeds)
    assert pad_conv_channels(model) == ["stem"]
    onnx.checker.check_model(model)
    assert [node.op_type for node in model.graph.node].count("Pad") == 2  # the input and the weight
    np.testing.assert_array_equal(_run(model, feeds)[0], before[0])


def test_padded_weight_is_folded_at_load(tmp_path):
    """The file keeps the unpadded weight; onnxruntime folds its Pad into a constant when a session starts."""
    model = qdq_conv_model(3)
    pad_conv_channels(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx")).graph
    shapes = {init.name: list(init.dims) for init in optimized.initializer}
    conv = next(node for node in optimized.node if node.op_type == "QLinearConv")
    assert shapes[conv.input[3]] == [8, 4, 3, 3]
    assert [node.op_type for node in optimized.node].count("Pad") == 1  # only the activation's


@pytest.mark.parametrize(
    "kwargs", [{"in_channels": 4}, {"in_channels": 6, "group": 2}, {"in_channels": 3, "weight_zero_point": 3}]
)
def test_convs_the_direct_kernel_cannot_take_are_left_alone(kwargs):
    """Already a multiple of 4, grouped, or weights with a zero-point (the direct kernel needs 0)."""
    model = qdq_conv_model(**kwargs)
    before = model.SerializeToString()
    assert pad_conv_channels(model) == []
    assert model.SerializeToString() == before


def test_padding_keeps_values_read_inside_bodies():
    model = qdq_conv_model(3, body_reads_input=True)
    feeds = {"x": RNG.standard_normal((2, 3, 6, 6)).astype(np.float32), "flag": np.array(True)}
    before = _run(model, feeds)
    assert pad_conv_channels(model) == ["stem"]
    onnx.checker.check_model(model)
    assert any(node.output[0] == "x_dq" for node in model.graph.node)  # the If body still reads it
    after = _run(model, feeds)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])


def test_candidate_layouts():
    names = [layout.name for layout in static_variants.candidate_layouts(["stem"], pad=True)]
    assert names == ["small_convs_float", "int8", "int8_padded"]
    assert [layout.name for layout in static_variants.candidate_layouts([], pad=False)] == ["int8"]


def _fake_latency(fastest: str):
    """interleaved_latency stand-in: `fastest` layout 1 ms, the others 2 ms (no timing in tests)."""

    def measure(paths: list[Path], evaluator, settings) -> list[LatencyStats]:
        return [
            LatencyStats(
                median_ms=1.0 if path.stem == f"layout_{fastest}" else 2.0,
                p90_ms=2.0,
                mean_ms=2.0,
                runs=3,
                threads=1,
                batch_size=1,
            )
            for path in paths
        ]

    return measure


@pytest.mark.parametrize("fastest", ["int8_padded", "small_convs_float"])
def test_static_keeps_the_layout_measured_fastest(digits_cnn, tmp_path, monkeypatch, fastest):
    """The step quantizes every layout, keeps the fastest, and says which and why in its metrics."""
    monkeypatch.setattr(static_variants, "interleaved_latency", _fake_latency(fastest))
    step = {"type": "quantize", "mode": "static", "speed_guard": False}
    result, recorder = run_step(digits_cnn.path, step, bundle(digits_cnn), tmp_path)
    details = result.metrics.steps[0].details
    layout = details["conv_layout"]
    assert set(layout["latency_ms"]) == {"small_convs_float", "int8", "int8_padded"}
    assert layout["chosen"] == fastest and layout["padded_convs"] == ["conv1"]
    assert details["small_convs"]["kept_float"] == (fastest == "small_convs_float")
    assert details["within_budget"] and result.metrics.fidelity.accuracy.drop <= 0.01
    graph = onnx.load(str(result.model_path)).graph
    pads = [node for node in graph.node if node.op_type == "Pad"]
    assert len(pads) == (2 if fastest == "int8_padded" else 0)  # the input and the weight
    assert details["conv_channels_padded"] == (["conv1"] if fastest == "int8_padded" else [])
    if fastest == "int8_padded":
        assert "padding the input channels of 1 int8 Conv(s)" in recorder.text()


def test_padding_can_be_switched_off(digits_cnn, tmp_path, monkeypatch):
    monkeypatch.setattr(static_variants, "interleaved_latency", _fake_latency("int8"))
    settings = EngineSettings(latency_runs=40, quant_pad_conv_channels=False)
    step = {"type": "quantize", "mode": "static", "speed_guard": False}
    result, _ = run_step(digits_cnn.path, step, bundle(digits_cnn), tmp_path, settings)
    layout = result.metrics.steps[0].details["conv_layout"]
    assert set(layout["latency_ms"]) == {"small_convs_float", "int8"} and layout["chosen"] == "int8"
