"""Shared helpers for the pruning tests: run models, prune with defaults, kill channels on purpose.

A "dead" channel (zero weights and bias, so it outputs exactly zero after ReLU) changes nothing
downstream; removing it must leave the outputs unchanged, which checks every index mapping exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from compression.pruning.structured import structured_prune


def run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def prune(path: Path, out: Path, sparsity: float, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "importance": "l1",
        "round_to": 1,
        "min_channels": 1,
        "exclude": [],
        "dataset": None,
        "batch_size": 64,
        "max_samples": 128,
        "check_canceled": lambda: None,
    }
    kwargs.update(overrides)
    return structured_prune(path, out, sparsity=sparsity, **kwargs)


def initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def kill_channels(model: onnx.ModelProto, weight: str, bias: str | None, channels: list[int], axis: int = 0) -> None:
    """Zero a layer's weights (along `axis`) and bias for `channels`, in place."""
    for tensor in model.graph.initializer:
        if tensor.name == weight or tensor.name == bias:
            array = numpy_helper.to_array(tensor).copy()
            index = [slice(None)] * array.ndim
            index[axis if tensor.name == weight else 0] = channels
            array[tuple(index)] = 0
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def conv(name: str, x: str, c_in: int, c_out: int, dead: list[int], rng: np.random.Generator) -> tuple:
    """A 3x3 Conv + ReLU whose `dead` output channels are exactly zero."""
    w = rng.normal(0, 0.5, (c_out, c_in, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, c_out).astype(np.float32) + 0.5
    w[dead] = 0
    b[dead] = 0
    nodes = [
        helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}_conv"], name=name, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", [f"{name}_conv"], [f"{name}_out"], name=f"{name}.relu"),
    ]
    inits = [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]
    return nodes, inits


def make_model(nodes: list, inits: list, inputs: list, outputs: list, path: Path) -> Path:
    graph = helper.make_graph(nodes, "test", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path
