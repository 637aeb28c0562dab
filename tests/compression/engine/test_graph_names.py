"""Names used through If/Loop/Scan bodies: what every graph rewrite asks before removing or renaming."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from compression.graph_names import (
    drop_unused_initializers,
    outer_references,
    read_counts,
    rename_values,
    used_names,
)


def _nested_model() -> onnx.ModelProto:
    """Top: If(cond) whose then-branch holds a Loop whose body reads `W` and `B` two scopes up."""
    loop_body = helper.make_graph(
        [
            helper.make_node("MatMul", ["acc_in", "W"], ["mm"]),
            helper.make_node("Add", ["mm", "B"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "loop_body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1, 4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, 4]),
        ],
    )
    then_branch = helper.make_graph(
        [helper.make_node("Loop", ["trips", "", "x"], ["looped"], body=loop_body)],
        "then",
        [],
        [helper.make_tensor_value_info("looped", TensorProto.FLOAT, [1, 4])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["negated"])],
        "else",
        [],
        [helper.make_tensor_value_info("negated", TensorProto.FLOAT, [1, 4])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch, name="if")],
        "nested",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [
            numpy_helper.from_array(np.eye(4, dtype=np.float32) * 2, "W"),
            numpy_helper.from_array(np.ones(4, np.float32), "B"),
            numpy_helper.from_array(np.array(2, np.int64), "trips"),
            numpy_helper.from_array(np.zeros(3, np.float32), "unused"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.ones((1, 4), np.float32), "cond": np.array(True)})[0]


def test_used_names_see_two_scopes_down() -> None:
    model = _nested_model()
    names = used_names(model.graph)
    assert {"W", "B", "trips", "x", "cond", "y"} <= names and "unused" not in names
    assert outer_references(model.graph) >= {"W", "B", "trips", "x"}
    assert "acc_in" not in outer_references(model.graph)  # a body's own input is not an outer reference
    assert used_names(ir.from_proto(model).graph) >= {"W", "B", "trips"}
    counts = read_counts(model.graph)
    assert counts["x"] == 2 and counts["W"] == 1 and counts["unused"] == 0  # Loop input and Neg; the Loop body


def test_drop_unused_keeps_what_bodies_read_and_the_model_runs() -> None:
    model = _nested_model()
    expected = _run(model)
    assert drop_unused_initializers(model.graph) == ["unused"]
    assert {init.name for init in model.graph.initializer} == {"W", "B", "trips"}
    np.testing.assert_allclose(_run(model), expected)


def test_rename_values_follows_outer_references_into_bodies() -> None:
    model = _nested_model()
    expected = _run(model)
    rename_values(model.graph, {"W": "w0", "B": "b0", "x": "input0"})
    onnx.checker.check_model(model)
    assert outer_references(model.graph) >= {"w0", "b0", "input0"} and "W" not in used_names(model.graph)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input0": np.ones((1, 4), np.float32), "cond": np.array(True)})[0]
    np.testing.assert_allclose(out, expected)
