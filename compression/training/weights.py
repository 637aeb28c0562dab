"""Which float tensors of a graph train, which are statistics, which stay fixed; and writing them back.

Trainable: float initializers and `Constant` tensors with more than one element that feed a data input
(weights, biases, norms, embeddings). Scalars (the 0.5 and sqrt(2) of a GELU decomposition, an epsilon)
and inputs that mean a setting rather than a weight (Resize scales, Clip bounds, Pow exponents, Pad values)
stay fixed. BatchNormalization running mean/variance are statistics: updated by batch statistics, not by
gradients.

If/Loop/Scan bodies count like the main graph: an initializer or Constant defined in a body, or a
main-graph initializer read only inside one, trains and is written back under its own name. A name
defined in more than one scope (allowed by ONNX for unrelated bodies) stays fixed: it would be ambiguous.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from compression.errors import CompressionError
from compression.training.scopes import walk_graphs, walk_nodes

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
SETTING_INPUTS: dict[str, set[int]] = {
    "Resize": {1, 2, 3},
    "Upsample": {1},
    "Clip": {1, 2},
    "Pow": {1},
    "Pad": {1, 2, 3},
    "ConstantOfShape": {0},
    "QuantizeLinear": {1, 2},  # scales and zero points stay fixed (QAT can force weight scales to train)
    "DequantizeLinear": {1, 2},
}
STATISTIC_INPUTS: dict[str, set[int]] = {"BatchNormalization": {3, 4}}


@dataclass
class WeightRoles:
    """Names of the graph's float tensors by role; `constant_nodes` maps a Constant output to its node name."""

    parameters: list[str] = field(default_factory=list)
    statistics: list[str] = field(default_factory=list)
    constant_nodes: dict[str, str] = field(default_factory=dict)

    @property
    def trained(self) -> list[str]:
        return [*self.parameters, *self.statistics]


def constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attribute in node.attribute:
        if attribute.name == "value" and attribute.type == onnx.AttributeProto.TENSOR:
            return attribute.t
    return None


def _candidates(graph: onnx.GraphProto) -> tuple[dict[str, onnx.TensorProto], dict[str, str], set[str]]:
    """Initializers and Constant tensors of every scope; names defined in more than one scope come apart."""
    candidates: dict[str, onnx.TensorProto] = {}
    constant_nodes: dict[str, str] = {}
    repeated: set[str] = set()

    def add(name: str, tensor: onnx.TensorProto) -> None:
        if name in candidates:
            repeated.add(name)
        candidates[name] = tensor

    for scope in walk_graphs(graph):
        for initializer in scope.initializer:
            add(initializer.name, initializer)
        for node in scope.node:
            tensor = constant_tensor(node) if node.op_type == "Constant" else None
            if tensor is not None:
                add(node.output[0], tensor)
                constant_nodes[node.output[0]] = node.name
    return candidates, constant_nodes, repeated


def classify(graph: onnx.GraphProto, frozen: Iterable[str] = (), force: Iterable[str] = ()) -> WeightRoles:
    """Sort the float initializers and Constant tensors of the graph and its bodies into parameters and statistics.

    `force` names float tensors that train whatever their size or use (QAT's learned weight scales).
    """
    candidates, constant_nodes, repeated = _candidates(graph)
    uses: dict[str, list[tuple[str, int]]] = {}
    for node in walk_nodes(graph):
        for index, name in enumerate(node.input):
            if name in candidates:
                uses.setdefault(name, []).append((node.op_type, index))
    frozen_set = set(frozen)
    unknown = sorted(frozen_set - candidates.keys())
    if unknown:
        raise CompressionError(f"frozen names {unknown} are not initializers or Constant outputs of the student")
    roles = WeightRoles()
    forced = set(force)
    for name, tensor in candidates.items():
        if tensor.data_type not in FLOAT_TYPES or name in frozen_set or name not in uses or name in repeated:
            continue
        if name in forced:
            roles.parameters.append(name)
        elif all(index in STATISTIC_INPUTS.get(op, set()) for op, index in uses[name]):
            roles.statistics.append(name)
        elif int(np.prod(tensor.dims)) > 1 and any(
            index not in SETTING_INPUTS.get(op, set()) | STATISTIC_INPUTS.get(op, set()) for op, index in uses[name]
        ):
            roles.parameters.append(name)
        else:
            continue
        if name in constant_nodes:
            roles.constant_nodes[name] = constant_nodes[name]
    return roles


def write_back(model: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of the model with new values under the original names, dtypes and shapes; nothing else changes.

    Initializers and Constant nodes inside If/Loop/Scan bodies are found and replaced like top-level ones.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    remaining = dict(values)
    for scope in walk_graphs(out.graph):
        for tensor in scope.initializer:
            if tensor.name in remaining:
                tensor.CopyFrom(_like(tensor, remaining.pop(tensor.name)))
        for node in scope.node:
            if node.op_type == "Constant" and node.output[0] in remaining:
                for attribute in node.attribute:
                    if attribute.name == "value":
                        attribute.t.CopyFrom(_like(attribute.t, remaining.pop(node.output[0])))
    if remaining:
        raise KeyError(f"tensors not found in the graph: {sorted(remaining)}")
    return out


def _like(original: onnx.TensorProto, value: np.ndarray) -> onnx.TensorProto:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(original.data_type)
    array = np.asarray(value).astype(dtype).reshape(tuple(original.dims))
    tensor = numpy_helper.from_array(array, name=original.name)
    if original.doc_string:
        tensor.doc_string = original.doc_string
    return tensor
