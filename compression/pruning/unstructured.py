"""Unstructured pruning: zero the smallest weights (magnitude) or all but N of every M (N:M).

The graph keeps its shapes; the zeros pay off in compressed size today and in sparse kernels later.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from compression.pruning.model_io import load_for_pruning, save_model, weight_array


@dataclass
class WeightedLayer:
    """A Conv/Gemm/MatMul whose weight is a constant, with the weight's input-channel axis."""

    node: ir.Node
    value: ir.Value
    input_axis: int


def weighted_layers(model: ir.Model) -> list[WeightedLayer]:
    """Conv, Gemm and MatMul nodes with an initializer weight, in graph order (each weight once)."""
    layers: list[WeightedLayer] = []
    seen: set[ir.Value] = set()
    for node in model.graph:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx"):
            continue
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        array = weight_array(weight)
        if array is None or array.ndim < 2 or weight in seen or not np.issubdtype(array.dtype, np.floating):
            continue
        if node.op_type == "Conv":
            axis = 1
        elif node.op_type == "Gemm":
            trans_b = node.attributes["transB"].as_int() if "transB" in node.attributes else 0
            axis = 1 if trans_b else 0
        else:
            axis = array.ndim - 2
        seen.add(weight)
        layers.append(WeightedLayer(node, weight, axis))
    return layers


def select_layers(
    layers: list[WeightedLayer], exclude: list[str], skip_first_last: bool
) -> tuple[list[WeightedLayer], dict[str, str]]:
    """Layers to prune and, for the others, why they are left dense."""
    skipped: dict[str, str] = {}
    chosen: list[WeightedLayer] = []
    for index, layer in enumerate(layers):
        name = layer.node.name or layer.value.name or f"layer{index}"
        if name in exclude:
            skipped[name] = "excluded"
        elif skip_first_last and index in (0, len(layers) - 1):
            skipped[name] = "first layer" if index == 0 else "last layer"
        else:
            chosen.append(layer)
    return chosen, skipped


def smallest_mask(magnitudes: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of exactly `k` smallest entries (ties broken by position, so the count is exact)."""
    mask = np.zeros(magnitudes.size, dtype=bool)
    if k > 0:
        mask[np.argsort(magnitudes.reshape(-1), kind="stable")[:k]] = True
    return mask.reshape(magnitudes.shape)


def magnitude_masks(arrays: list[np.ndarray], sparsity: float, scope: Literal["global", "layer"]) -> list[np.ndarray]:
    """Zero masks hitting `sparsity` exactly: per layer, or over all chosen weights pooled together."""
    if scope == "layer":
        return [smallest_mask(np.abs(a), int(round(a.size * sparsity))) for a in arrays]
    flat = np.concatenate([np.abs(a).reshape(-1) for a in arrays]) if arrays else np.zeros(0)
    pooled = smallest_mask(flat, int(round(flat.size * sparsity)))
    masks, start = [], 0
    for a in arrays:
        masks.append(pooled[start : start + a.size].reshape(a.shape))
        start += a.size
    return masks


def n_m_mask(array: np.ndarray, axis: int, n: int, m: int) -> np.ndarray | None:
    """Zero the m-n smallest of every m consecutive weights along `axis`; None when the axis is not a multiple of m."""
    if array.shape[axis] % m:
        return None
    moved = np.moveaxis(np.abs(array), axis, -1)
    blocks = moved.reshape(*moved.shape[:-1], -1, m)
    order = np.argsort(blocks, axis=-1, kind="stable")
    mask = np.zeros(blocks.shape, dtype=bool)
    np.put_along_axis(mask, order[..., : m - n], True, axis=-1)
    return np.moveaxis(mask.reshape(moved.shape), -1, axis)


def unstructured_prune(
    model_path: Path,
    out_path: Path,
    *,
    method: Literal["magnitude", "n_m"],
    sparsity: float = 0.0,
    scope: Literal["global", "layer"] = "global",
    n: int = 2,
    m: int = 4,
    exclude: list[str],
    skip_first_last: bool,
) -> dict[str, Any]:
    """Zero weights in place of the chosen layers; returns per-layer and total sparsity of what was pruned."""
    model = load_for_pruning(model_path, infer=False)  # zeroing needs no shapes
    layers, skipped = select_layers(weighted_layers(model), exclude, skip_first_last)
    arrays = [layer.value.const_value.numpy() for layer in layers]
    if method == "magnitude":
        masks: list[np.ndarray | None] = list(magnitude_masks(arrays, sparsity, scope))
    else:
        masks = [n_m_mask(a, layer.input_axis, n, m) for a, layer in zip(arrays, layers, strict=True)]
    per_layer: dict[str, dict[str, Any]] = {}
    zeros = total = 0
    for layer, array, mask in zip(layers, arrays, masks, strict=True):
        name = layer.node.name or layer.value.name
        if mask is None:
            skipped[name] = f"input channels ({array.shape[layer.input_axis]}) are not a multiple of m={m}"
            continue
        pruned = np.where(mask, np.zeros((), array.dtype), array)
        layer.value.const_value = ir.tensor(pruned, name=layer.value.name)
        layer_zeros = int(np.count_nonzero(pruned == 0))
        per_layer[name] = {"weights": int(array.size), "sparsity": layer_zeros / array.size}
        zeros += layer_zeros
        total += array.size
    save_model(model, out_path)
    return {
        "requested_sparsity": sparsity if method == "magnitude" else 1 - n / m,
        "achieved_sparsity": zeros / total if total else 0.0,
        "pruned_weights": total,
        "layers": per_layer,
        "skipped_layers": skipped,
    }
