"""A layer's input and output as the rows of a least-squares problem: Conv patches (im2col) at sampled output
positions, Gemm/MatMul rows; used by the pruning refit (reconstruction.py)."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    return node.attributes[name].as_int() if name in node.attributes else default


def output_rows(op: str, y: np.ndarray) -> np.ndarray | None:
    """The layer's output as [rows, channels] (Conv: every batch entry and position)."""
    if op == "Conv":
        if y.ndim < 3:
            return None
        return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])
    if y.ndim < 1:
        return None
    return y.reshape(-1, y.shape[-1]) if y.ndim > 1 else y.reshape(1, -1)


def input_rows(node: ir.Node, weight_shape: tuple[int, ...], x: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
    """The layer's input as the [rows, K] matrix its weight multiplies, at the sampled output rows."""
    if node.op_type == "Conv":
        return im2col(node, x, rows, weight_shape)
    if node.op_type == "Gemm":
        a = x.T if _int_attr(node, "transA", 0) else x
        return a[rows] if a.ndim == 2 and rows.max() < a.shape[0] else None
    flat = x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(1, -1)
    return flat[rows] if rows.max() < flat.shape[0] else None


def im2col(node: ir.Node, x: np.ndarray, rows: np.ndarray, weight_shape: tuple[int, ...]) -> np.ndarray | None:
    """Patches of `x` [n, C, *spatial] under the output positions `rows` (flat over n and output space)."""
    kernel = [int(k) for k in weight_shape[2:]]
    dims = len(kernel)
    if x.ndim != dims + 2 or x.shape[1] != weight_shape[1]:
        return None
    strides = _ints(node, "strides", [1] * dims)
    dilations = _ints(node, "dilations", [1] * dims)
    spatial = list(x.shape[2:])
    auto_pad = node.attributes["auto_pad"].as_string() if "auto_pad" in node.attributes else "NOTSET"
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [math.ceil(s / st) for s, st in zip(spatial, strides, strict=True)]
        begin = []
        for i in range(dims):
            total = max((out[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial[i], 0)
            begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
    else:
        pads = _ints(node, "pads", [0] * (2 * dims)) if auto_pad != "VALID" else [0] * (2 * dims)
        begin = pads[:dims]
        out = [
            (spatial[i] + pads[i] + pads[i + dims] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1
            for i in range(dims)
        ]
    per_sample = int(np.prod(out))
    if rows.max() >= x.shape[0] * per_sample:
        return None
    batch, position = np.divmod(rows, per_sample)
    coords = np.unravel_index(position, out)
    offsets = np.stack(np.unravel_index(np.arange(int(np.prod(kernel))), kernel))  # [dims, kk]
    index, valid = [], np.ones((len(rows), offsets.shape[1]), dtype=bool)
    for i in range(dims):
        at = coords[i][:, None] * strides[i] - begin[i] + offsets[i][None, :] * dilations[i]
        valid &= (at >= 0) & (at < spatial[i])
        index.append(np.clip(at, 0, spatial[i] - 1))
    patches = x[(batch[:, None], slice(None), *index)]  # advanced indices first: [rows, kk, C]
    patches = np.where(valid[:, :, None], patches, 0)
    return np.ascontiguousarray(patches.transpose(0, 2, 1).reshape(len(rows), -1))


def _ints(node: ir.Node, name: str, default: list[int]) -> list[int]:
    return [int(v) for v in node.attributes[name].as_ints()] if name in node.attributes else default
