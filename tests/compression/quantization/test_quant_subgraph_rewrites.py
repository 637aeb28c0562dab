"""Rewrites that change initializers in place see the readers inside If bodies; body nodes can be kept float.

Each model is built here with an `If` whose branches read a tensor the rewrite changes (a MatMul weight that
SmoothQuant rescales, a Conv bias that bias correction shifts), or hold the only quantizable node.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
from quant_helpers import run_step, save

from compression.datasets import Dataset, DatasetBundle
from compression.metrics.inference import make_session, run_dataset
from compression.model_info import inspect_model
from compression.quantization.bias_correction import BiasCorrector
from compression.quantization.calibration import DatasetReader
from compression.quantization.smooth_quant import smooth
from compression.settings import EngineSettings

D, T = 32, 8


def branch_reading(name: str, out: str) -> tuple[onnx.GraphProto, onnx.GraphProto]:
    """Two If branches that return ReduceSum(outer tensor `name`) and its negation."""
    then = helper.make_graph(
        [helper.make_node("ReduceSum", [name], [f"{out}_then"], name=f"{out}_sum_then", keepdims=0)],
        "then",
        [],
        [helper.make_tensor_value_info(f"{out}_then", TensorProto.FLOAT, [])],
    )
    other = helper.make_graph(
        [
            helper.make_node("ReduceSum", [name], [f"{out}_s"], name=f"{out}_sum_else", keepdims=0),
            helper.make_node("Neg", [f"{out}_s"], [f"{out}_else"], name=f"{out}_neg_else"),
        ],
        "else",
        [],
        [helper.make_tensor_value_info(f"{out}_else", TensorProto.FLOAT, [])],
    )
    return then, other


def if_reading(name: str, out: str, condition_from: str) -> list[onnx.NodeProto]:
    """cond = ReduceSum(condition_from) > -1e30 (always true); out = If(cond) reading `name` in its bodies."""
    then, other = branch_reading(name, out)
    return [
        helper.make_node("ReduceSum", [condition_from], [f"{out}_total"], name=f"{out}_total", keepdims=0),
        helper.make_node("Constant", [], [f"{out}_floor"], name=f"{out}_floor", value_float=-1e30),
        helper.make_node("Greater", [f"{out}_total", f"{out}_floor"], [f"{out}_cond"], name=f"{out}_cond"),
        helper.make_node("If", [f"{out}_cond"], [out], name=f"{out}_if", then_branch=then, else_branch=other),
    ]


def norm_matmul_with_body_reader() -> onnx.ModelProto:
    """x -> LayerNorm (outlier channels) -> MatMul(W) -> y, and an If whose branches read W."""
    rng = np.random.default_rng(0)
    gamma = np.ones(D, np.float32)
    gamma[[2, 9, 20]] = 60.0
    inits = [
        numpy_helper.from_array(gamma, "gamma"),
        numpy_helper.from_array(np.zeros(D, np.float32), "beta"),
        numpy_helper.from_array((rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32), "W"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1),
        helper.make_node("MatMul", ["h", "W"], ["y"], name="fc"),
        *if_reading("W", "w_sum", "x"),
    ]
    graph = helper.make_graph(
        nodes,
        "norm_matmul_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", T, D])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", T, D]),
            helper.make_tensor_value_info("w_sum", TensorProto.FLOAT, []),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_smooth_quant_copies_a_weight_an_if_body_reads(tmp_path):
    src = save(norm_matmul_with_body_reader(), tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((64, T, D)).astype(np.float32)
    data = Dataset.bind({"x": x}, inspect_model(src).inputs)
    dst = tmp_path / "smoothed.onnx"
    report = smooth(src, dst, data, 0.5, 8.0, 32, 1, tmp_path / "work")
    assert report is not None and report.layer_norms == 1 and report.matmuls == 1  # smoothed, through a copy
    model = onnx.load(str(dst))
    fc = next(node for node in model.graph.node if node.name == "fc")
    assert fc.input[1] != "W"  # the MatMul reads a private, rescaled copy
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    original = numpy_helper.to_array(next(i for i in onnx.load(str(src)).graph.initializer if i.name == "W"))
    np.testing.assert_array_equal(weights["W"], original)  # what the If branches read is untouched
    assert not np.allclose(weights[fc.input[1]], original)
    before = run_dataset(make_session(src), data, 32)
    after = run_dataset(make_session(dst), data, 32)
    np.testing.assert_allclose(after["w_sum"], before["w_sum"], rtol=1e-6)
    np.testing.assert_allclose(after["y"], before["y"], rtol=1e-3, atol=1e-3)  # an equivalent float graph


def conv_with_body_reader() -> onnx.ModelProto:
    """x[N,4,8,8] -> Conv(W, B) -> Relu -> y, and an If whose branches read the bias B."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((8, 4, 3, 3)) * 0.3 + 0.05).astype(np.float32)
    inits = [
        numpy_helper.from_array(weight, "W"),
        numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "B"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
        *if_reading("B", "b_sum", "x"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 8, 8]),
            helper.make_tensor_value_info("b_sum", TensorProto.FLOAT, []),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_bias_correction_leaves_a_bias_an_if_body_reads(tmp_path):
    src = save(conv_with_body_reader(), tmp_path / "conv.onnx")
    x = np.random.default_rng(1).uniform(0.0, 1.0, (64, 4, 8, 8)).astype(np.float32)
    data = Dataset.bind({"x": x}, inspect_model(src).inputs)
    quantized = tmp_path / "q.onnx"
    quantize_static(
        str(src),
        str(quantized),
        DatasetReader(data, data.n_samples),
        quant_format=QuantFormat.QDQ,
        per_channel=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"QuantizeBias": False},
    )
    corrected = tmp_path / "corrected.onnx"
    shutil.copy(quantized, corrected)
    report = BiasCorrector(data, 64, 1, tmp_path / "bc").apply(src, corrected)
    assert report.nodes_corrected == 0
    assert "If/Loop/Scan" in report.skipped["conv"]
    bias = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(corrected)).graph.initializer}["B"]
    np.testing.assert_array_equal(bias, numpy_helper.to_array(conv_with_body_reader().graph.initializer[1]))
    before = run_dataset(make_session(src), data, 32)["b_sum"]
    after = run_dataset(make_session(corrected), data, 32)["b_sum"]
    np.testing.assert_array_equal(after, before)


def body_matmul_model() -> onnx.ModelProto:
    """x[n,16] -> If(always true): then x @ W1, else x @ W2 -> y[n,8]; the only MatMuls live in the bodies."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((16, 8)) / 4).astype(np.float32), "W1"),
        numpy_helper.from_array((rng.standard_normal((16, 8)) / 4).astype(np.float32), "W2"),
    ]
    branches = [
        helper.make_graph(
            [helper.make_node("MatMul", ["x", weight], [f"y_{label}"], name=f"body_matmul_{label}")],
            label,
            [],
            [helper.make_tensor_value_info(f"y_{label}", TensorProto.FLOAT, ["n", 8])],
        )
        for label, weight in (("then", "W1"), ("else", "W2"))
    ]
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], name="total", keepdims=0),
        helper.make_node("Constant", [], ["floor"], name="floor", value_float=-1e30),
        helper.make_node("Greater", ["total", "floor"], ["cond"], name="cond"),
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=branches[0], else_branch=branches[1]),
    ]
    graph = helper.make_graph(
        nodes,
        "body_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_nodes_inside_if_bodies_are_ranked_and_kept_float_by_the_search(tmp_path):
    """A budget no int8 model meets (SNR >= 200 dB): the search must rank and exclude the body MatMul."""
    src = save(body_matmul_model(), tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    data = DatasetBundle(eval=Dataset.bind({"x": x}, inspect_model(src).inputs))
    step = {"type": "quantize", "mode": "dynamic", "speed_guard": False, "max_accuracy_drop": 0.01}
    step["budget_metric"] = "snr_db"
    settings = EngineSettings(latency_runs=5, quant_min_snr_db=200.0)
    result, _ = run_step(src, step, data, tmp_path / "run", settings)
    details = result.metrics.steps[0].details
    ranked = {row["node"]: row for row in details["sensitivity"]}
    assert "body_matmul_then" in ranked and ranked["body_matmul_then"]["op_type"] == "MatMul"
    assert ranked["body_matmul_then"]["error"] > 0  # measured at the If's output, not unmatched (-1)
    kept = [set(attempt["kept_float"]) for attempt in details["attempt_history"]]
    assert any("body_matmul_then" in names for names in kept)
    # the branch that runs stays float; the give-back pass may quantize the other one again (it never runs, so
    # it costs nothing): either way the returned model meets the 200 dB floor
    assert "body_matmul_then" in details["nodes_kept_float"]
    assert details["input_model_returned"] or details.get("given_back")
