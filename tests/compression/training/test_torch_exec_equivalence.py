"""The torch executor reproduces onnxruntime on every development model, and writes weights back losslessly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import model_zoo
from compression.errors import UnsupportedOperatorError
from compression.training.graph_module import OnnxGraphModule
from compression.training.weights import write_back
from model_zoo.third_party_inputs import sample_feeds

TOLERANCE = 1e-4
RNG = np.random.default_rng(0)

RELATIVE_TOLERANCE = 1e-5  # of the output's largest magnitude (outputs with large values)

# Feeds that probe more than the package's typical input (a non-zero recurrent state); other third-party
# models use model_zoo.third_party_inputs.sample_feeds.
THIRD_PARTY_FEEDS = {
    "silero_vad": lambda: {
        "input": (0.1 * RNG.standard_normal((5, 576))).astype(np.float32),
        "h": RNG.standard_normal((1, 1, 128)).astype(np.float32),
        "c": RNG.standard_normal((1, 1, 128)).astype(np.float32),
    },
}


def _third_party_feeds(name: str) -> dict[str, np.ndarray]:
    if name in THIRD_PARTY_FEEDS:
        return THIRD_PARTY_FEEDS[name]()
    try:
        return sample_feeds(name)
    except KeyError as exc:
        pytest.skip(f"no sample feeds for third-party model {name}: {exc}")


def _diffs(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """Per output: max |torch - onnxruntime|, and that over the output's largest magnitude (integer outputs
    must match exactly to pass)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    reference = dict(zip(names, session.run(names, feeds), strict=True))
    module = OnnxGraphModule(proto).eval()
    with torch.no_grad():
        ours = module({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()})
    diffs = {}
    for name in names:
        got, want = ours[name].numpy().astype(np.float64), reference[name].astype(np.float64)
        assert got.shape == want.shape, name
        diff = float(np.abs(got - want).max()) if want.size else 0.0
        scale = float(np.abs(want).max()) if want.size else 0.0
        diffs[name] = (diff, diff / scale if scale else diff)
    return diffs


def _max_diff(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Max |torch - onnxruntime| per output."""
    return {name: diff for name, (diff, _) in _diffs(model, feeds).items()}


@pytest.mark.parametrize("name", model_zoo.MODEL_NAMES)
def test_zoo_model_matches_onnxruntime(name: str) -> None:
    dev = model_zoo.load(name)
    diffs = _max_diff(dev.path, dev.feeds("test", 256))
    assert max(diffs.values()) <= TOLERANCE, diffs


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(model_zoo.THIRD_PARTY_MODELS))
def test_third_party_model_matches_onnxruntime(name: str, third_party_model) -> None:  # noqa: ANN001
    """Every real model, every output: max abs diff <= 1e-4, or <= 1e-5 of the output's largest magnitude."""
    diffs = _diffs(third_party_model(name), _third_party_feeds(name))
    assert all(diff <= TOLERANCE or rel <= RELATIVE_TOLERANCE for diff, rel in diffs.values()), diffs


def _model(nodes: list[onnx.NodeProto], inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:  # noqa: ANN001
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _f(name: str, shape: list) -> onnx.ValueInfoProto:  # noqa: ANN001
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((0.3 * RNG.standard_normal(shape)).astype(np.float32), name)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_recurrent_ops_match_onnxruntime(op: str, direction: str) -> None:
    dirs, hidden, gates = (2 if direction == "bidirectional" else 1), 6, (4 if op == "LSTM" else 3)
    extra = {"linear_before_reset": 1} if op == "GRU" and direction == "reverse" else {}
    inits = [_w("W", dirs, gates * hidden, 5), _w("R", dirs, gates * hidden, hidden), _w("B", dirs, 2 * gates * hidden)]
    node = helper.make_node(
        op, ["x", "W", "R", "B", "", "h0"], ["y", "yh"], hidden_size=hidden, direction=direction, **extra
    )
    model = _model([node], [_f("x", [7, 3, 5]), _f("h0", [dirs, 3, hidden])], [_f("y", None), _f("yh", None)], inits)
    feeds = {"x": RNG.standard_normal((7, 3, 5)).astype(np.float32), "h0": RNG.standard_normal((dirs, 3, hidden))}
    feeds["h0"] = feeds["h0"].astype(np.float32)
    assert max(_max_diff(model, feeds).values()) <= TOLERANCE


def test_layout_ops_match_onnxruntime() -> None:
    """Asymmetric pads, strided negative Slice, Resize, ConvTranspose, AveragePool with pads, Split, TopK."""
    nodes = [
        helper.make_node("Conv", ["x", "cw"], ["c"], pads=[0, 1, 1, 0], strides=[2, 1]),
        helper.make_node("AveragePool", ["c"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
        helper.make_node("ConvTranspose", ["p", "tw"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
        helper.make_node(
            "Resize",
            ["t", "", "scales"],
            ["r"],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
        helper.make_node("Slice", ["r", "starts", "ends", "axes", "steps"], ["s"]),
        helper.make_node("Split", ["s", "split"], ["s1", "s2"], axis=1),
        helper.make_node("Erf", ["s1"], ["g"]),
        helper.make_node("ReduceMax", ["s2"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("TopK", ["m", "k"], ["tv", "ti"], axis=1),
    ]
    inits = [
        _w("cw", 4, 2, 3, 3),
        _w("tw", 4, 3, 3, 3),
        numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales"),
        numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([-100, 100], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.array([3, 1], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([-2, 1], dtype=np.int64), "steps"),
        numpy_helper.from_array(np.array([1, 1], dtype=np.int64), "split"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "k"),
    ]
    outputs = [_f("g", None), _f("tv", None), helper.make_tensor_value_info("ti", TensorProto.INT64, None)]
    model = _model(nodes, [_f("x", [2, 2, 9, 8])], outputs, inits)
    assert max(_max_diff(model, {"x": RNG.standard_normal((2, 2, 9, 8)).astype(np.float32)}).values()) <= TOLERANCE


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_opset20_matches_onnxruntime(approximate: str) -> None:
    model = _model(
        [helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)], [_f("x", [4, 5])], [_f("y", None)], opset=20
    )
    model.ir_version = 9
    assert max(_max_diff(model, {"x": RNG.standard_normal((4, 5)).astype(np.float32)}).values()) <= TOLERANCE


def test_unsupported_operator_is_named_before_anything_runs() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("Det", ["a"], ["b"], name="the_det"),
        helper.make_node("Custom", ["b"], ["y"], name="mine", domain="com.example"),
    ]
    model = _model(nodes, [_f("x", [2, 2])], [_f("y", None)])
    with pytest.raises(UnsupportedOperatorError) as caught:
        OnnxGraphModule(model)
    assert "Det (node 'the_det')" in caught.value.message
    assert "com.example.Custom" in caught.value.message


def test_write_back_keeps_the_graph_and_changes_only_trained_tensors() -> None:
    dev = model_zoo.load("residual_cnn")
    proto = onnx.load(str(dev.path))
    module = OnnxGraphModule(proto)
    assert "block1.a.1.running_mean" in module.roles.statistics
    assert "block1.a.1.running_mean" not in module.roles.parameters
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(1.0)
    out = write_back(proto, module.trained_values())
    assert [n.SerializeToString() for n in out.graph.node] == [n.SerializeToString() for n in proto.graph.node]
    before = {t.name: t for t in proto.graph.initializer}
    assert [t.name for t in out.graph.initializer] == list(before)
    for tensor in out.graph.initializer:
        old = before[tensor.name]
        assert (tensor.data_type, list(tensor.dims)) == (old.data_type, list(old.dims))
        delta = numpy_helper.to_array(tensor) - numpy_helper.to_array(old)
        expected = 1.0 if tensor.name in module.roles.parameters else 0.0
        assert np.allclose(delta, expected), tensor.name


def test_gradients_reach_every_parameter() -> None:
    dev = model_zoo.load("transformer_block")
    module = OnnxGraphModule(onnx.load(str(dev.path))).train()
    out = module({dev.input_name: torch.from_numpy(dev.feeds("train", 16)[dev.input_name])})
    out[dev.output_name].square().mean().backward()
    names = module.roles.parameters
    assert "attn.scale" not in names and "gelu.sqrt2" not in names  # scalars of decompositions stay fixed
    missing = [n for n, p in zip(names, module.parameters(), strict=True) if p.grad is None or not p.grad.any()]
    assert not missing


@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_one_hot_matches_onnxruntime(axis: int) -> None:
    node = helper.make_node("OneHot", ["indices", "depth", "values"], ["y"], axis=axis)
    inits = [
        numpy_helper.from_array(np.array(5, dtype=np.int64), "depth"),
        numpy_helper.from_array(np.array([-0.5, 2.0], dtype=np.float32), "values"),
    ]
    indices = helper.make_tensor_value_info("indices", TensorProto.INT64, [2, 3])
    model = _model([node], [indices], [_f("y", None)], inits)
    feeds = {"indices": np.array([[0, 4, -1], [-5, 7, 2]], dtype=np.int64)}  # -1 and -5 wrap, 7 is out of range
    assert max(_max_diff(model, feeds).values()) == 0.0
