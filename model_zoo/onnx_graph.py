"""A tiny helper to write ONNX graphs node by node, so builders mirror their torch modules explicitly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# IR 8 is the version that introduced opset 17; every onnxruntime that runs opset 17 accepts it.
IR_VERSION = 8
BATCH_DIM = "batch"


class GraphBuilder:
    """Collects nodes and initializers; names outputs uniquely so builders only name what matters."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counts: dict[str, int] = {}

    def _fresh(self, prefix: str) -> str:
        count = self._counts.get(prefix, 0)
        self._counts[prefix] = count + 1
        return f"{prefix}_{count}"

    def const(self, name: str, value: np.ndarray) -> str:
        """Add an initializer (trained weight or shape constant) and return its name."""
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name=name))
        return name

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        output: str | None = None,
        name: str | None = None,
        **attrs: Any,
    ) -> str:
        """Append one single-output node; returns its output name."""
        node_name = name or self._fresh(op_type)
        out = output or f"{node_name}_out"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=node_name, **attrs))
        return out

    def build(
        self,
        inputs: Sequence[onnx.ValueInfoProto],
        outputs: Sequence[onnx.ValueInfoProto],
    ) -> onnx.ModelProto:
        """Assemble, check and shape-infer the model at the pinned opset and IR version."""
        graph = helper.make_graph(self.nodes, self.name, list(inputs), list(outputs), self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="model_zoo",
        )
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def tensor_input(name: str, elem_type: int, shape: Sequence[int]) -> onnx.ValueInfoProto:
    """Graph input whose leading axis is the symbolic batch dimension."""
    return helper.make_tensor_value_info(name, elem_type, [BATCH_DIM, *shape])


def float_output(name: str, shape: Sequence[int]) -> onnx.ValueInfoProto:
    """Float32 graph output with a symbolic batch axis."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH_DIM, *shape])


def to_numpy(tensor: Any) -> np.ndarray:
    """Copy a torch tensor/parameter to a float32 (or native) numpy array without keeping autograd state."""
    array = tensor.detach().cpu().numpy()
    return array.astype(np.float32) if array.dtype == np.float64 else array
