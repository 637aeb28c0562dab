"""A two-Conv model whose intermediate tensors are large per sample (32 x 96 x 96 float32 = 1.2 MB each), for
tests of batches sized by the memory settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compression.datasets import Dataset

SIDE = 96


def wide_cnn(path: Path, scale: float = 1.0) -> Path:
    """x [N, 3, 96, 96] -> Conv 32 -> Relu -> Conv 32 -> GlobalAveragePool -> y [N, 32]; `scale` scales conv1."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.normal(0, 0.3, (32, 3, 3, 3)) * scale).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, (32, 32, 3, 3)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def wide_data(n: int, seed: int) -> Dataset:
    x = np.random.default_rng(seed).normal(0, 1, (n, 3, SIDE, SIDE)).astype(np.float32)
    return Dataset(arrays={"x": x}, labels=None, layout="batched")
