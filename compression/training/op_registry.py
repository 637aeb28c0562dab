"""Maps ONNX op types to torch implementations, so an unsupported operator is known before training starts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from compression.errors import UnsupportedOperatorError
from compression.training.scopes import walk_nodes

Tensor = torch.Tensor
Inputs = Sequence[Tensor | None]
OpOutput = Tensor | Sequence[Tensor]
DEFAULT_MAX_LOOP_ITERATIONS = 10_000  # the distill step passes its setting (distill max_loop_iterations)


@dataclass
class NodeInfo:
    """What an op implementation may read besides its inputs: attributes, opset, and (for errors) its name."""

    op_type: str
    name: str
    opset: int
    attrs: dict[str, Any] = field(default_factory=dict)
    n_outputs: int = 1
    training: bool = False
    bn_train: bool = False
    captured: list[str] = field(default_factory=list)
    max_loop_iterations: int = DEFAULT_MAX_LOOP_ITERATIONS

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def split_captured(self, xs: Inputs) -> tuple[list[Tensor | None], dict[str, Tensor]]:
        """A control-flow node's own inputs, and the outer-scope values its bodies read (appended after them)."""
        own = len(xs) - len(self.captured)
        return list(xs[:own]), dict(zip(self.captured, xs[own:], strict=True))


OpFn = Callable[[Inputs, NodeInfo], OpOutput]
_OPS: dict[str, OpFn] = {}


def register(*op_types: str) -> Callable[[OpFn], OpFn]:
    def wrap(fn: OpFn) -> OpFn:
        for op_type in op_types:
            _OPS[op_type] = fn
        return fn

    return wrap


def lookup(op_type: str) -> OpFn | None:
    return _OPS.get(op_type)


def supported_ops() -> list[str]:
    return sorted(_OPS)


def check_supported(graph: onnx.GraphProto) -> None:
    """Fail before any work starts, naming every operator (and one node of each) the executor lacks.

    Walks If/Loop/Scan bodies too: an operator inside a branch fails the check like a top-level one.
    """
    missing: dict[str, str] = {}
    for node in walk_nodes(graph):
        known = node.domain in ("", "ai.onnx") and node.op_type in _OPS
        if not known:
            key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            missing.setdefault(key, node.name or "<unnamed>")
    if missing:
        detail = ", ".join(f"{op} (node {name!r})" for op, name in sorted(missing.items()))
        raise UnsupportedOperatorError(
            f"distillation cannot train this model: unsupported operator(s) {detail}; "
            f"supported: {', '.join(supported_ops())}"
        )


def decode_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """Attribute values as Python/torch values; subgraph attributes stay GraphProtos (the compiler replaces them)."""
    attrs: dict[str, Any] = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8") for v in value]
        elif isinstance(value, onnx.TensorProto):
            value = to_torch(numpy_helper.to_array(value))
        attrs[attribute.name] = value
    return attrs


def to_torch(array: np.ndarray) -> Tensor:
    """A torch copy of a numpy array; unsigned 16/32/64-bit ints (no torch kernels) become int64."""
    array = np.asarray(array)
    if array.dtype in (np.uint16, np.uint32, np.uint64):
        array = array.astype(np.int64)
    return torch.from_numpy(np.array(array, copy=True))
