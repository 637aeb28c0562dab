"""Structured pruning on small graphs built here: Concat/Split/Slice index mapping and unknown ops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from prune_helpers import conv, initializers, make_model, prune, run

from compression.pruning.structured import groups_of


@pytest.fixture(scope="module")
def concat_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A and B are concatenated, split and sliced back, and joined by Adds (so they form one group).

    Every channel a 0.25 pruning should remove is dead (zero weights in and out), so the pruned model
    must compute the same outputs; any wrong index mapping through Concat/Split/Slice would break that.
    """
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    for name, c_in, c_out, dead, x in (
        ("A", 2, 8, [0, 1], "x"),
        ("B", 2, 8, [0, 1], "x"),
        ("C", 16, 8, [3, 5], "y"),
        ("D", 8, 8, [2, 7], "w"),
    ):
        n, i = conv(name, x, c_in, c_out, dead, rng)
        nodes += n
        inits += i
    concat_nodes = [
        helper.make_node("Concat", ["A_out", "B_out"], ["y"], name="cat_ab", axis=1),
        helper.make_node("Split", ["y", "split"], ["s1", "s2"], name="split", axis=1),
        helper.make_node("Slice", ["y", "starts", "ends", "axes"], ["s3"], name="slice"),
        helper.make_node("Add", ["s1", "s3"], ["z"], name="add1"),
        helper.make_node("Add", ["z", "s2"], ["w"], name="add2"),
    ]
    # C and D come after their inputs exist; insert the joins before them.
    nodes = nodes[:4] + concat_nodes + nodes[4:]
    nodes += [
        helper.make_node("Concat", ["C_out", "D_out"], ["e"], name="cat_cd", axis=1),
        helper.make_node("GlobalAveragePool", ["e"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    fc = rng.normal(0, 0.5, (3, 16)).astype(np.float32)
    fc[:, [3, 5, 8 + 2, 8 + 7]] = 0
    inits += [
        numpy_helper.from_array(np.array([8, 8], np.int64), "split"),
        numpy_helper.from_array(np.array([8], np.int64), "starts"),
        numpy_helper.from_array(np.array([16], np.int64), "ends"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
        numpy_helper.from_array(fc, "fc.w"),
        numpy_helper.from_array(np.zeros(3, np.float32), "fc.b"),
    ]
    for tensor in inits:  # consumers ignore the dead channels too, so their importance is exactly zero
        if tensor.name in ("C.w", "D.w"):
            array = numpy_helper.to_array(tensor).copy()
            array[:, [0, 1, 8, 9] if tensor.name == "C.w" else [0, 1]] = 0
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 6, 6])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    return make_model(nodes, inits, [x], [out], tmp_path_factory.mktemp("concat") / "concat.onnx")


def test_concat_split_slice_map_channels_exactly(concat_graph: Path, tmp_path: Path) -> None:
    groups = {tuple(sorted(g.producers)): g for g in groups_of(concat_graph)}
    assert ("A", "B") in groups, "the Adds of split/slice halves must couple A and B into one group"
    report = prune(concat_graph, tmp_path / "pruned.onnx", 0.25)
    pruned = tmp_path / "pruned.onnx"
    onnx.checker.check_model(str(pruned), full_check=True)
    weights = initializers(pruned)
    assert weights["A.w"].shape == (6, 2, 3, 3) and weights["B.w"].shape == (6, 2, 3, 3)
    assert weights["C.w"].shape == (6, 12, 3, 3), "C reads both halves of the concat"
    assert weights["D.w"].shape == (6, 6, 3, 3)
    assert weights["fc.w"].shape == (3, 12)
    graph = onnx.load(str(pruned)).graph
    split = next(n for n in graph.node if n.op_type == "Split")
    assert weights[split.input[1]].tolist() == [6, 6]
    slice_node = next(n for n in graph.node if n.op_type == "Slice")
    assert weights[slice_node.input[1]].tolist() == [6] and weights[slice_node.input[2]].tolist() == [12]
    x = np.random.default_rng(1).normal(size=(5, 2, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run(pruned, {"x": x})[0], run(concat_graph, {"x": x})[0], rtol=1e-5, atol=1e-5)
    assert report["groups_pruned"] == 3 and report["groups_skipped"] == 1


@pytest.fixture(scope="module")
def unknown_op_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A's channels go through DepthToSpace (mixes channels into space): the analysis cannot follow them."""
    rng = np.random.default_rng(2)
    nodes, inits = [], []
    for name, c_in, c_out, x in (("A", 1, 8, "x"), ("B", 2, 8, "d2s"), ("C", 8, 8, "B_out")):
        n, i = conv(name, x, c_in, c_out, [], rng)
        nodes += n
        inits += i
    nodes.insert(2, helper.make_node("DepthToSpace", ["A_out"], ["d2s"], name="d2s", blocksize=2))
    nodes += [
        helper.make_node("GlobalAveragePool", ["C_out"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["logits"], name="flatten", axis=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 4, 4])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])
    return make_model(nodes, inits, [x], [out], tmp_path_factory.mktemp("unknown") / "unknown.onnx")


def test_unknown_op_leaves_group_intact_with_reason(unknown_op_graph: Path, tmp_path: Path) -> None:
    pruned = tmp_path / "pruned.onnx"
    report = prune(unknown_op_graph, pruned, 0.5)
    by_producer = {tuple(g["producers"]): g for g in report["groups"]}
    assert by_producer[("A",)]["status"] == "skipped"
    assert "DepthToSpace 'd2s'" in by_producer[("A",)]["reason"]
    assert by_producer[("C",)]["status"] == "skipped" and "graph output" in by_producer[("C",)]["reason"]
    assert by_producer[("B",)]["status"] == "pruned" and by_producer[("B",)]["kept"] == 4
    onnx.checker.check_model(str(pruned), full_check=True)
    before, after = initializers(unknown_op_graph), initializers(pruned)
    np.testing.assert_array_equal(after["A.w"], before["A.w"])
    assert after["C.w"].shape == (8, 4, 3, 3)
    x = np.random.default_rng(3).normal(size=(2, 1, 4, 4)).astype(np.float32)
    assert run(pruned, {"x": x})[0].shape == (2, 8)


def test_exclude_keeps_the_named_layers_group(unknown_op_graph: Path, tmp_path: Path) -> None:
    report = prune(unknown_op_graph, tmp_path / "pruned.onnx", 0.5, exclude=["C"])
    by_producer = {tuple(g["producers"]): g for g in report["groups"]}
    assert by_producer[("B",)]["status"] == "skipped", "C's input columns belong to B's group"
    assert "node 'C' is excluded" in by_producer[("B",)]["reason"]
    assert report["channels_removed"] == 0


def test_shape_computed_flatten_is_rewritten(tmp_path: Path) -> None:
    """PyTorch's flatten export, Reshape(x, Concat(Shape(x)[0], [-1])), keeps the channels prunable."""
    rng = np.random.default_rng(4)
    nodes, inits = conv("A", "x", 1, 8, [1, 6], rng)
    nodes += [
        helper.make_node("Shape", ["A_out"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["batch", "zero_axes"], ["batch_1d"], name="unsqueeze"),
        helper.make_node("Concat", ["batch_1d", "minus_one"], ["target"], name="target", axis=0),
        helper.make_node("Reshape", ["A_out", "target"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    fc = rng.normal(0, 0.5, (3, 8 * 16)).astype(np.float32)
    fc[:, [c * 16 + k for c in (1, 6) for k in range(16)]] = 0
    inits += [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "zero_axes"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        numpy_helper.from_array(fc, "fc.w"),
        numpy_helper.from_array(np.zeros(3, np.float32), "fc.b"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 4, 4])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    source = make_model(nodes, inits, [x], [out], tmp_path / "flatten.onnx")
    pruned = tmp_path / "pruned.onnx"
    report = prune(source, pruned, 0.25)
    assert {tuple(g["producers"]): g["status"] for g in report["groups"]}[("A",)] == "pruned"
    onnx.checker.check_model(str(pruned), full_check=True)
    assert initializers(pruned)["fc.w"].shape == (3, 6 * 16)
    data = np.random.default_rng(5).normal(size=(3, 1, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(run(pruned, {"x": data})[0], run(source, {"x": data})[0], rtol=1e-5, atol=1e-5)
