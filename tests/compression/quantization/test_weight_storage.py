"""int8 weight storage (mode `int8_weights`): weights stored int8, rebuilt to float under their own names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compression.datasets import Dataset, DatasetBundle
from compression.model_info import inspect_model
from compression.quantization.auto import plan
from compression.quantization.config import AutoQuantizeConfig
from compression.quantization.conv_weights import conv_weights_to_int8
from compression.quantization.weight_storage import store_weights, weight_nodes
from tests.compression.quantization.quant_helpers import SETTINGS, feeds_dataset, run_step, save

HIDDEN = 16


def _init(name: str, *shape: int) -> onnx.TensorProto:
    rng = np.random.default_rng(len(name) * 31 + sum(shape))  # the same weights in every test
    return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32), name)


def mixed_model() -> onnx.ModelProto:
    """Conv -> MatMul (shared weight read twice) -> LSTM, plus an If whose branches read an outer weight.

    x [1, 3, 8, 8] -> Conv(8 ch) -> reshape [1, 8, 64] -> MatMul W_shared [64, 64] -> MatMul W_shared -> LSTM
    (seq 8, input 64, hidden 16) -> y; `If(flag)`: then MatMul(x_flat, W_body), else MatMul(x_flat, W_body) * 2.
    """
    inits = [
        _init("conv_w", 8, 3, 3, 3),
        _init("conv_b", 8),
        numpy_helper.from_array(np.array([1, 8, 64], dtype=np.int64), "shape3"),
        _init("W_shared", 64, 64),
        _init("lstm_W", 1, 4 * HIDDEN, 64),
        _init("lstm_R", 1, 4 * HIDDEN, HIDDEN),
        _init("lstm_B", 1, 8 * HIDDEN),
        _init("W_body", 64, 32),
        numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
    ]
    then_branch = helper.make_graph(
        [helper.make_node("MatMul", ["flat", "W_body"], ["then_out"], name="body_then_mm")],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [1, 8, 32])],
    )
    else_branch = helper.make_graph(
        [
            helper.make_node("MatMul", ["flat", "W_body"], ["else_mm"], name="body_else_mm"),
            helper.make_node("Mul", ["else_mm", "two"], ["else_out"], name="body_else_mul"),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [1, 8, 32])],
    )
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape3"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "W_shared"], ["m1"], name="mm1"),
        helper.make_node("MatMul", ["m1", "W_shared"], ["m2"], name="mm2"),
        helper.make_node("Transpose", ["m2"], ["seq"], name="to_seq", perm=[1, 0, 2]),
        helper.make_node("LSTM", ["seq", "lstm_W", "lstm_R", "lstm_B"], ["", "y_h"], name="lstm", hidden_size=HIDDEN),
        helper.make_node("Squeeze", ["y_h"], ["y"], name="squeeze"),
        helper.make_node("If", ["flag"], ["z"], name="branch", then_branch=then_branch, else_branch=else_branch),
    ]
    graph = helper.make_graph(
        nodes,
        "mixed",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [HIDDEN]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8, 32]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto | Path, flag: bool) -> list[np.ndarray]:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    return session.run(None, {"x": x, "flag": np.array(flag)})


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("rebuild", ["cast_mul", "dequantize_linear"])
def test_every_weight_is_stored_int8_and_outputs_stay_close(rebuild):
    model = mixed_model()
    reference = [_run(model, flag) for flag in (True, False)]
    stored = onnx.ModelProto()
    stored.CopyFrom(model)
    stats = store_weights(stored, min_elements=64, rebuild=rebuild)
    onnx.checker.check_model(stored)
    assert stats.tensors == 5  # conv_w, W_shared (once), lstm_W, lstm_R, W_body; biases and tiny tensors stay
    names = {init.name: init.data_type for init in stored.graph.initializer}
    for weight in ("conv_w", "W_shared", "lstm_W", "lstm_R", "W_body"):
        assert weight not in names  # rebuilt by a node under the same name
        assert names[f"{weight}_int8"] == TensorProto.INT8
    assert names["lstm_B"] == TensorProto.FLOAT
    assert stored.ByteSize() < 0.4 * model.ByteSize()
    for flag, expected in zip((True, False), reference, strict=True):
        for got, want in zip(_run(stored, flag), expected, strict=True):
            assert got.shape == want.shape
            assert _cosine(got, want) > 0.999


def test_float16_storage_halves_the_weights_and_keeps_outputs():
    model = mixed_model()
    reference = _run(model, False)
    stored = onnx.ModelProto()
    stored.CopyFrom(model)
    stats = store_weights(stored, dtype="float16", min_elements=64)
    onnx.checker.check_model(stored)
    assert stats.tensors == 5
    names = {init.name: init.data_type for init in stored.graph.initializer}
    assert names["W_body_fp16"] == TensorProto.FLOAT16 and "W_body" not in names
    assert stored.ByteSize() < 0.6 * model.ByteSize()
    for got, want in zip(_run(stored, False), reference, strict=True):
        assert _cosine(got, want) > 0.99999


def test_float16_storage_leaves_values_beyond_its_range_float():
    model = mixed_model()
    big = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "W_shared")) * 1e6
    for index, init in enumerate(model.graph.initializer):
        if init.name == "W_shared":
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(big.astype(np.float32), "W_shared"))
    store_weights(model, dtype="float16", min_elements=64)
    names = {init.name: init.data_type for init in model.graph.initializer}
    assert names["W_shared"] == TensorProto.FLOAT


def test_a_weight_read_by_an_excluded_node_stays_float():
    model = mixed_model()
    stats = store_weights(model, min_elements=64, exclude={"mm2", "body_else_mm"})
    names = {init.name: init.data_type for init in model.graph.initializer}
    assert names["W_shared"] == TensorProto.FLOAT  # mm1 shares it with the excluded mm2
    assert names["W_body"] == TensorProto.FLOAT  # read by the excluded node inside the else branch
    assert stats.tensors == 3
    assert _run(model, True)[0].shape == (HIDDEN,)


def test_weight_nodes_lists_body_nodes_and_skips_small_weights():
    nodes = weight_nodes(mixed_model(), min_elements=64)
    assert set(nodes) == {"conv", "mm1", "mm2", "lstm", "body_then_mm", "body_else_mm"}
    assert "conv" not in weight_nodes(mixed_model(), min_elements=1000)


@pytest.mark.parametrize("dtype", ["int8", "float16"])
def test_onnxruntime_folds_the_rebuild(tmp_path, dtype):
    model = mixed_model()
    store_weights(model, dtype=dtype, min_elements=64)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    assert not [node for node in optimized.graph.node if node.op_type in ("Cast", "Mul")]


@pytest.mark.parametrize(
    ("mode", "dtype", "largest"), [("int8_weights", "int8", 0.45), ("fp16_weights", "float16", 0.6)]
)
def test_weight_storage_step_and_auto_plan(tmp_path, mode, dtype, largest):
    path = save(mixed_model(), tmp_path / "mixed.onnx")
    inputs = inspect_model(path).inputs
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((8, 1, 3, 8, 8)).astype(np.float32), "flag": np.array([True, False] * 4)}
    datasets = DatasetBundle(eval=Dataset.bind(feeds, inputs))
    step = {"type": "quantize", "mode": mode, "max_accuracy_drop": 0.01, "speed_guard": False}
    result, _ = run_step(path, step, datasets, tmp_path / "work", SETTINGS)
    details = result.metrics.steps[0].details
    assert details["within_budget"], details.get("reasons")
    assert not details["input_model_returned"], details.get("reason")
    assert details["weight_storage"]["dtype"] == dtype
    assert details["weight_storage"]["tensors"] == 4  # conv_w (216 values) is under the 256 default
    assert result.model_path.stat().st_size < largest * path.stat().st_size
    configs, notes = plan(path, AutoQuantizeConfig(mode="auto"), _Ctx())
    assert {"int8_weights", "fp16_weights"} <= {config.mode for config in configs}
    assert any(note.startswith("int8_weights") for note in notes)


class _Ctx:
    settings = SETTINGS

    class datasets:  # noqa: N801
        calibration = None
        train = None


def two_matmuls() -> onnx.ModelProto:
    """x[N, 64] @ W1 @ W2 -> y; W1's first row is 1e4, so int8 per column rounds the rest of W1 to 0."""
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((64, 64)).astype(np.float32) / 8
    w2 = rng.standard_normal((64, 64)).astype(np.float32) / 8
    w1[0, :] = 1e4
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
            helper.make_node("MatMul", ["h", "W2"], ["y"], name="mm2"),
        ],
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("kept", ["float16", "float32"])
def test_nodes_the_search_keeps_out_of_int8_get_float16_weights(tmp_path, kept):
    path = save(two_matmuls(), tmp_path / "two.onnx")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 64)).astype(np.float32)
    x[:, 0] = 0.0  # the outlier row meets zeros: the float model ignores it, int8 rounding does not
    datasets = DatasetBundle(eval=feeds_dataset({"x": x}, path))
    step = {"type": "quantize", "mode": "int8_weights", "max_accuracy_drop": 0.01, "speed_guard": False}
    result, _ = run_step(path, {**step, "kept_out_of_int8": kept}, datasets, tmp_path / "work", SETTINGS)
    details = result.metrics.steps[0].details
    assert details["within_budget"], details.get("reasons")
    assert details["nodes_kept_float"] == ["mm1"]
    types = {init.name: init.data_type for init in onnx.load(str(result.model_path)).graph.initializer}
    assert TensorProto.INT8 in types.values()
    assert (TensorProto.FLOAT16 in types.values()) == (kept == "float16")


def test_a_weight_defined_inside_a_body_is_stored_in_that_body():
    """An initializer of the then-branch itself: its int8 copy and rebuild node stay in the branch."""
    w = numpy_helper.from_array(np.random.default_rng(5).standard_normal((32, 32)).astype(np.float32), "W_local")
    then_branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W_local"], ["t"], name="local_mm")],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 32])],
        [w],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"], name="keep")],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 32])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch)],
        "local",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(6).standard_normal((1, 32)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = before.run(None, {"x": x, "flag": np.array(True)})[0]
    assert store_weights(model, min_elements=64).tensors == 1
    onnx.checker.check_model(model)
    body = next(attr.g for attr in model.graph.node[0].attribute if attr.name == "then_branch")
    assert {init.name for init in body.initializer} == {"W_local_int8", "W_local_scale"}
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert _cosine(after.run(None, {"x": x, "flag": np.array(True)})[0], expected) > 0.999


def test_a_weight_reaching_its_op_through_layout_ops_is_stored():
    """W is sliced in two, the halves concatenated in another order and transposed before the MatMul (how an
    exported LSTM reorders its gates): W is still a weight; keeping the MatMul float keeps W float."""
    w = np.random.default_rng(7).standard_normal((32, 64)).astype(np.float32)
    starts = {"s0": [0], "e0": [16], "s1": [16], "e1": [32], "axes": [0]}
    inits = [numpy_helper.from_array(w, "W")]
    inits += [numpy_helper.from_array(np.array(v, dtype=np.int64), k) for k, v in starts.items()]
    nodes = [
        helper.make_node("Slice", ["W", "s0", "e0", "axes"], ["top"], name="slice_top"),
        helper.make_node("Slice", ["W", "s1", "e1", "axes"], ["bottom"], name="slice_bottom"),
        helper.make_node("Concat", ["bottom", "top"], ["swapped"], name="swap", axis=0),
        helper.make_node("Transpose", ["swapped"], ["wt"], name="transpose", perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "forwarded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert weight_nodes(model, min_elements=64) == ["mm"]
    kept = onnx.ModelProto()
    kept.CopyFrom(model)
    assert store_weights(kept, min_elements=64, exclude={"mm"}).tensors == 0
    x = np.random.default_rng(8).standard_normal((1, 64)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert store_weights(model, min_elements=64).tensors == 1
    assert "W_int8" in {init.name for init in model.graph.initializer}
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert _cosine(got[0], expected[0]) > 0.999


@pytest.mark.parametrize("as_ir", [False, True])
def test_conv_weights_to_int8_stores_only_conv_weights(as_ir):
    """dynamic's `conv: int8_weights`: the Conv weight alone is stored int8, an onnx proto or an onnx_ir model."""
    model = mixed_model()
    reference = _run(model, True)
    target = ir.from_proto(model) if as_ir else onnx.ModelProto.FromString(model.SerializeToString())
    assert conv_weights_to_int8(target, exclude=set()) == 1
    stored = ir.to_proto(target) if as_ir else target
    names = {init.name: init.data_type for init in stored.graph.initializer}
    assert names["conv_w_int8"] == TensorProto.INT8 and names["W_shared"] == TensorProto.FLOAT
    for got, want in zip(_run(stored, True), reference, strict=True):
        assert _cosine(got, want) > 0.999
