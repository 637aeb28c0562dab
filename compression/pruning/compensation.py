"""Bias compensation: fold the mean of each removed channel into the next layer's bias.

A removed channel stops contributing W[:, i] * x_i to its consumer; replacing x_i by its mean over the
calibration data keeps the consumer's expected output, which recovers much of the accuracy pruning
loses before any fine-tuning (ReLU outputs have a large positive mean). Conv borders with zero padding
make this approximate there; it is exact for Gemm/MatMul.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from compression.pruning.importance import PositionStats
from compression.pruning.layout import Analysis
from compression.pruning.rewrite import Removal, positions, set_input_initializer

COMPENSATED = frozenset({"Conv", "Gemm", "MatMul"})  # layers whose bias absorbs a removed input's mean


def compensate_biases(
    model: ir.Model, analysis: Analysis, removal: Removal, stats: dict[str, PositionStats]
) -> list[str]:
    """Add each consumer's lost mean contribution to its bias (before the rewrite slices anything).

    Returns the names of the layers whose bias changed.
    """
    deltas: dict[ir.Node, np.ndarray] = {}
    for root, removed in removal.items():
        if len(removed) == 0:
            continue
        for slot in analysis.groups[root].slots:
            node = slot.node
            data = node.inputs[0]
            if slot.role != "weight_in" or node.op_type not in COMPENSATED or data is None or _is_grouped_conv(node):
                continue
            if data.name not in stats:
                continue
            lost = positions(removed, slot.offset, slot.block)
            mean = stats[data.name].mean[lost]
            rows = np.moveaxis(np.asarray(node.inputs[1].const_value.numpy(), dtype=np.float64), slot.axis, 0)[lost]
            # rows: [removed positions, ...the weight's other axes]; contract positions with their means.
            contribution = np.tensordot(mean, rows, axes=(0, 0))
            if node.op_type == "Conv":
                contribution = contribution.reshape(contribution.shape[0], -1).sum(axis=1)
            elif node.op_type == "Gemm":
                alpha = node.attributes["alpha"].as_float() if "alpha" in node.attributes else 1.0
                contribution = alpha * contribution
            deltas[node] = deltas.get(node, 0) + contribution
    changed = []
    for node, delta in deltas.items():
        if _add_bias(node.graph or model.graph, node, np.asarray(delta)):
            changed.append(node.name or node.op_type)
    return changed


def _is_grouped_conv(node: ir.Node) -> bool:
    return node.op_type == "Conv" and "group" in node.attributes and node.attributes["group"].as_int() != 1


def _add_bias(graph: ir.Graph, node: ir.Node, delta: np.ndarray) -> bool:
    """Add `delta` (one value per output channel) to the node's bias, creating one where there is none."""
    if node.op_type == "Conv":
        return _update_input(graph, node, 2, delta, 1.0)
    if node.op_type == "Gemm":
        beta = node.attributes["beta"].as_float() if "beta" in node.attributes else 1.0
        return beta != 0 and _update_input(graph, node, 2, delta, beta)
    # MatMul: the bias lives in the Add that follows it (when that Add's other input is a constant).
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) == 1 and uses[0][0].op_type == "Add" and not out.is_graph_output():
        add, index = uses[0]
        return _update_input(graph, add, 1 - index, delta, 1.0)
    return False


def _update_input(graph: ir.Graph, node: ir.Node, index: int, delta: np.ndarray, scale: float) -> bool:
    current = node.inputs[index] if len(node.inputs) > index else None
    if current is None:
        base = np.zeros(delta.shape, dtype=node.inputs[1].const_value.numpy().dtype)
    elif current.const_value is None or current.is_graph_input():
        return False
    else:
        base = current.const_value.numpy()
        if base.ndim and base.shape[-1] not in (1, delta.shape[0]):
            return False
    updated = (np.asarray(base, dtype=np.float64) + delta / scale).astype(base.dtype)
    set_input_initializer(graph, node, index, updated, f"{node.name or node.op_type}_bias_compensated")
    return True
