"""Automatic hints: same-name, same-shape intermediates downstream of the weights a prune changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from compression.datasets import Dataset
from compression.pruning.structured import structured_prune
from compression.training.auto_hints import pick_hints


def _pruned(dev, tmp_path: Path) -> Path:  # noqa: ANN001
    out = tmp_path / "pruned.onnx"
    structured_prune(dev.path, out, sparsity=0.5, importance="l2", round_to=1, min_channels=1, exclude=[],
                     dataset=None, batch_size=32, max_samples=32, check_canceled=lambda: None)  # fmt: skip
    return out


def _shapes(path: Path, names: list[str], feed: dict[str, np.ndarray]) -> list[tuple[int, ...]]:
    model = onnx.load(str(path))
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [v.shape for v in session.run(names, feed)]


def test_hints_are_same_shape_tensors_downstream_of_pruned_weights(transformer_block, tmp_path: Path) -> None:  # noqa: ANN001
    pruned = _pruned(transformer_block, tmp_path)
    arrays = dict(np.load(transformer_block.write_npz(tmp_path / "train.npz", "train")))
    arrays.pop("labels")
    train = Dataset(arrays={k: v[:16] for k, v in arrays.items()}, labels=None, layout="batched")
    student, teacher = onnx.load(str(pruned)), onnx.load(str(transformer_block.path))
    hints = pick_hints(student, teacher, train, 3, 64)
    assert 1 <= len(hints) <= 3
    outputs = {v.name for v in teacher.graph.output}
    assert not set(hints) & outputs
    feed = train.first_feed(2)
    assert _shapes(pruned, hints, feed) == _shapes(transformer_block.path, hints, feed)
    assert pick_hints(student, teacher, train, 0, 64) == []
    assert pick_hints(teacher, teacher, train, 3, 64) == []  # nothing changed: nothing to match
    assert pick_hints(student, teacher, train, 3, 1e-6) == []  # no hint fits the memory cap


def _with_shape_tensor() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """x [N, 2] -> MatMul(w) -> y [N, 2]; Cast(Shape(y)) is a float [2] that does not grow with N."""
    from onnx import TensorProto, helper

    def model(w: np.ndarray) -> onnx.ModelProto:
        nodes = [
            helper.make_node("MatMul", ["x", "w"], ["y"]),
            helper.make_node("Relu", ["y"], ["r"]),
            helper.make_node("Shape", ["r"], ["s"]),
            helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["sf", "two"], ["grid"]),
            helper.make_node("Identity", ["r"], ["out"]),
            helper.make_node("Identity", ["grid"], ["grid_out"]),
        ]
        inits = [helper.make_tensor("w", TensorProto.FLOAT, [2, 2], w.ravel().tolist()),
                 helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])]  # fmt: skip
        outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 2]),
                   helper.make_tensor_value_info("grid_out", TensorProto.FLOAT, [2])]  # fmt: skip
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
                                  outputs, inits)  # fmt: skip
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])

    return model(np.eye(2, dtype=np.float32) * 0.5), model(np.eye(2, dtype=np.float32))


def test_tensors_without_a_sample_axis_are_never_hints() -> None:
    student, teacher = _with_shape_tensor()
    x = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    train = Dataset(arrays={"x": x}, labels=None, layout="batched")
    hints = pick_hints(student, teacher, train, 8, 64)
    assert "r" in hints or "y" in hints
    assert not {"sf", "grid"} & set(hints)  # [2] on a 2-sample probe, but still [2] with 3 samples
