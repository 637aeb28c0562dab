"""Tensors that hold one value everywhere (zeros for an initial state, ones_like masks), whatever their shape.

Exporters build them from the shape of a channel-carrying tensor (`ConstantOfShape(Shape(x))`,
`Expand(0, Concat(batch, [H]))`); they would pin the channel count, but an elementwise op reads them as
their single value, so the rewrite can replace them by a scalar and the channels stay prunable.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from compression.pruning.model_io import weight_array

# Ops whose output holds only values of their first input (moved, repeated or selected).
_VALUE_PRESERVING = frozenset({"Identity", "Slice", "Squeeze", "Unsqueeze", "Reshape", "Tile", "Expand", "Gather"})
FILL_PRESERVING = _VALUE_PRESERVING | {"Cast"}


def uniform_fill(value: ir.Value | None, depth: int = 8) -> np.ndarray | None:
    """The single value (a 0-d array of the tensor's type) every element of `value` holds, or None."""
    if value is None or depth == 0:
        return None
    array = weight_array(value)
    if array is not None:
        flat = array.reshape(-1)
        return flat[:1].reshape(()) if flat.size and np.all(flat == flat[0]) else None
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx") or not node.inputs:
        return None
    if node.op_type == "ConstantOfShape":
        fill = node.attributes.get("value")
        return np.zeros((), np.float32) if fill is None else fill.as_tensor().numpy().reshape(())
    if node.op_type == "Cast":
        inner = uniform_fill(node.inputs[0], depth - 1)
        return None if inner is None else inner.astype(ir.DataType(node.attributes["to"].as_int()).numpy())
    if node.op_type == "Concat":
        parts = [uniform_fill(v, depth - 1) for v in node.inputs]
        if any(p is None for p in parts) or len({p.item() for p in parts}) != 1:  # type: ignore[union-attr]
            return None
        return parts[0]
    if node.op_type in _VALUE_PRESERVING:
        return uniform_fill(node.inputs[0], depth - 1)
    return None


def zero_filled(value: ir.Value | None) -> bool:
    fill = uniform_fill(value)
    return fill is not None and not np.any(fill)
