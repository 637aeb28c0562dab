"""Symbolic shapes for the channel analysis: dims that may be unknown, and Reshapes that keep channels whole."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

SHAPE_OPS = frozenset({"Cast", "Identity", "Slice", "Gather", "Concat", "Squeeze", "Unsqueeze"})
CHANNELS = ("channels",)  # the channel count inside evaluated shape arithmetic


def symbolic_dims(value: ir.Value | None) -> list | None:
    """Dims as ints, ("sym", name) for named symbolic dims, or ("dim", id, axis) placeholders."""
    if value is None:
        return None
    if value.const_value is not None:
        return [int(d) for d in value.const_value.shape]
    if value.shape is None:
        return None
    out: list = []
    for axis, dim in enumerate(value.shape):
        if isinstance(dim, int) and dim >= 0:
            out.append(dim)
        elif isinstance(dim, ir.SymbolicDim) and dim.value:
            out.append(("sym", dim.value))
        else:
            out.append(("dim", id(value), axis))
    return out


def match_channel_reshape(in_dims: list, target: list, axis: int) -> tuple[int, list[int]] | None:
    """How a Reshape treats the channel axis: (positions per channel after it, the constant tail), or None.

    Accepted: the dims before the channel axis are kept, the channel axis absorbs the next few (known)
    axes, and the dims after it are known constants. Anything else mixes channels with other axes.
    """
    out = [in_dims[i] if entry == 0 and i < len(in_dims) else entry for i, entry in enumerate(target)]
    if len(out) <= axis or out[:axis] != in_dims[:axis] or any(e == -1 for e in out[:axis]):
        return None
    tail = out[axis + 1 :]
    if not all(isinstance(e, int) and e > 0 for e in tail):
        return None
    for j in range(axis + 1, len(in_dims) + 1):
        merged = in_dims[axis + 1 : j]
        if not all(isinstance(d, int) for d in merged) or in_dims[j:] != tail:
            continue
        factor = int(np.prod(merged or [1]))
        head = out[axis]
        known = isinstance(in_dims[axis], int) and isinstance(head, int) and head == in_dims[axis] * factor
        if head == -1 or known or (head == CHANNELS and j == axis + 1):
            return factor, tail
    return None
