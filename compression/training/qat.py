"""Quantization-aware training of a QDQ graph: its integer weights train as float, then are re-quantized.

In a QDQ graph (onnxruntime's static quantization, QDQ format) every weight is an integer initializer read
by a `DequantizeLinear` with a fixed scale (and zero point); activations pass through
`QuantizeLinear` -> `DequantizeLinear` pairs. For training, `prepare_qat` returns a copy of the graph
whose integer weights are replaced by their dequantized float values under the same names, and marks
their `DequantizeLinear` nodes (attribute `qat_dtype`, only in this in-memory copy) so the executor
fake-quantizes them in the forward pass: round(w / scale) + zero point, clamped to the integer range,
times the scale again, with a straight-through gradient (ops_quant.py). Activation pairs stay fake-quant
with their fixed scales. `finish_qat` turns the trained float weights back into integers with the kept
scales (or the learned ones, `learn_scales`, LSQ-style), so the result is the same QDQ graph with new
integer weights; where a weight or input scale was learned, the int32 bias of the same layer is re-quantized
with input scale x weight scale, the product onnxruntime's fused integer kernels assume.

Learned scales (weight scales read only by weight DQs, activation scales read only by Q/DQ pairs) train in
log space: the copy holds log(scale) and its Q/DQ nodes are marked `qat_log_scale`, so the executor uses
exp(value). An optimizer step of about `lr` is then a relative change of the scale of about `lr`, whatever
its magnitude (a raw scale of 1e-3 moved by AdamW's ~1e-3 per step would double or vanish in one step),
and the scale stays positive.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from compression.training.scopes import walk_graphs, walk_nodes

QAT_DTYPE_ATTR = "qat_dtype"
LOG_SCALE_ATTR = "qat_log_scale"  # the scale input holds log(scale) (a learned scale, in the training copy)
INTEGER_TYPES = {
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.INT32,
}
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm")  # ops whose third input is a bias quantized as input x weight scale


def integer_range(data_type: int) -> tuple[int, int]:
    info = np.iinfo(onnx.helper.tensor_dtype_to_np_dtype(data_type))
    return int(info.min), int(info.max)


@dataclass
class QatWeight:
    """An integer weight trained as float: its dtype, scale/zero-point names and values, and the axis."""

    name: str
    data_type: int
    scale_name: str
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int

    def dequantize(self, q: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
        s, z = self._shaped(scale if scale is not None else self.scale, q.ndim), self._shaped(self.zero_point, q.ndim)
        return ((q.astype(np.float64) - z) * s).astype(np.float32)

    def quantize(self, w: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
        s, z = self._shaped(scale if scale is not None else self.scale, w.ndim), self._shaped(self.zero_point, w.ndim)
        lo, hi = integer_range(self.data_type)
        q = np.clip(np.rint(w.astype(np.float32) / s.astype(np.float32)) + z, lo, hi)
        return q.astype(onnx.helper.tensor_dtype_to_np_dtype(self.data_type))

    def _shaped(self, value: np.ndarray, rank: int) -> np.ndarray:
        value = np.asarray(value)
        if value.ndim == 1 and value.size > 1:
            shape = [1] * rank
            shape[self.axis % rank] = value.size
            return value.reshape(shape)
        return value.reshape(()) if value.size == 1 else value


@dataclass
class QatPlan:
    weights: dict[str, QatWeight] = field(default_factory=dict)
    learnable_scales: list[str] = field(default_factory=list)  # weight scales used by weight DQs only
    activation_scales: list[str] = field(default_factory=list)  # scales read only by activation Q/DQ pairs
    bias_links: list[tuple[str, str, str]] = field(default_factory=list)  # (bias, input scale, weight scale)

    @property
    def active(self) -> bool:
        return bool(self.weights)

    def scale_count(self) -> int:
        """Scales `learn_scales` trains: the weight and the activation ones."""
        return len(self.learnable_scales) + len(self.activation_scales)


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    found: dict[str, onnx.TensorProto] = {}
    for scope in walk_graphs(graph):
        for tensor in scope.initializer:
            found[tensor.name] = tensor
    return found


def _axis(node: onnx.NodeProto) -> int:
    for attribute in node.attribute:
        if attribute.name == "axis":
            return attribute.i
    return 1


def _block_size(node: onnx.NodeProto) -> int:
    for attribute in node.attribute:
        if attribute.name == "block_size":
            return attribute.i
    return 0


def find_qat_weights(graph: onnx.GraphProto) -> QatPlan:
    """Integer initializers read only as the data input of DequantizeLinear nodes with constant scales."""
    constants = _constants(graph)
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in walk_nodes(graph):
        for index, name in enumerate(node.input):
            if name in constants:
                uses.setdefault(name, []).append((node, index))
    plan = QatPlan()
    for name, tensor in constants.items():
        if tensor.data_type not in INTEGER_TYPES:
            continue
        readers = uses.get(name, [])
        if not readers or any(node.op_type != "DequantizeLinear" or index != 0 for node, index in readers):
            continue
        node = readers[0][0]
        scale_name = node.input[1]
        zp_name = node.input[2] if len(node.input) > 2 else ""
        if scale_name not in constants or (zp_name and zp_name not in constants) or _block_size(node):
            continue
        if any(tuple(n.input[1:]) != tuple(node.input[1:]) or _axis(n) != _axis(node) for n, _ in readers):
            continue
        zero_point = numpy_helper.to_array(constants[zp_name]) if zp_name else np.zeros((), np.int64)
        scale = numpy_helper.to_array(constants[scale_name]).astype(np.float32)
        plan.weights[name] = QatWeight(name, tensor.data_type, scale_name, scale, zero_point.astype(np.int64),
                                       _axis(node))  # fmt: skip
    weight_scales = {w.scale_name for w in plan.weights.values() if w.data_type in (onnx.TensorProto.INT8,
                                                                                      onnx.TensorProto.UINT8)}  # fmt: skip
    for scale in sorted(weight_scales):
        readers = uses.get(scale, [])
        if all(node.op_type == "DequantizeLinear" and node.input[0] in plan.weights for node, _ in readers):
            plan.learnable_scales.append(scale)
    plan.activation_scales = _activation_scales(constants, uses, plan)
    plan.bias_links = _bias_links(graph, plan)
    return plan


def _activation_scales(
    constants: Mapping[str, onnx.TensorProto], uses: Mapping[str, list[tuple[onnx.NodeProto, int]]], plan: QatPlan
) -> list[str]:
    """Positive float scale initializers read only as the scale of QuantizeLinear/DequantizeLinear nodes on
    activations (not on a planned weight), at least one of them a QuantizeLinear: the calibrated ranges."""
    found = []
    for name, readers in uses.items():
        tensor = constants.get(name)
        if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT or name in plan.learnable_scales:
            continue
        if not all(node.op_type in ("QuantizeLinear", "DequantizeLinear") and index == 1 for node, index in readers):
            continue
        if any(node.input[0] in plan.weights or _block_size(node) for node, _ in readers):
            continue
        if not any(node.op_type == "QuantizeLinear" for node, _ in readers):
            continue
        if np.all(numpy_helper.to_array(tensor) > 0):
            found.append(name)
    return sorted(found)


def _bias_links(graph: onnx.GraphProto, plan: QatPlan) -> list[tuple[str, str, str]]:
    """(int32 bias, input scale, weight scale) for Conv/Gemm nodes reading all three through DequantizeLinear."""
    producers = {out: node for node in walk_nodes(graph) for out in node.output}
    links = []
    for node in walk_nodes(graph):
        if node.op_type not in LINEAR_OPS or len(node.input) < 3:
            continue
        dqs = [producers.get(name) for name in node.input[:3]]
        if any(dq is None or dq.op_type != "DequantizeLinear" for dq in dqs):
            continue
        x_dq, w_dq, b_dq = dqs  # type: ignore[misc]
        bias, weight = plan.weights.get(b_dq.input[0]), plan.weights.get(w_dq.input[0])
        if bias is None or weight is None or bias.data_type != onnx.TensorProto.INT32:
            continue
        links.append((bias.name, x_dq.input[1], weight.scale_name))
    return links


def prepare_qat(model: onnx.ModelProto, plan: QatPlan, learned: Collection[str] = ()) -> onnx.ModelProto:
    """A copy whose planned integer weights are float (dequantized) and whose weight DQs fake-quantize.

    `learned` scales (from the plan's learnable weight and activation scales) are stored as log(scale), and
    every Q/DQ node reading them is marked to exponentiate.
    """
    logged = set(learned) & (set(plan.learnable_scales) | set(plan.activation_scales))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for scope in walk_graphs(out.graph):
        for tensor in scope.initializer:
            weight = plan.weights.get(tensor.name)
            if weight is not None:
                value = weight.dequantize(numpy_helper.to_array(tensor))
                tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
            elif tensor.name in logged:
                value = np.log(np.maximum(np.abs(numpy_helper.to_array(tensor)), 1e-12)).astype(np.float32)
                tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
        for node in scope.node:
            if node.op_type == "DequantizeLinear" and node.input[0] in plan.weights:
                node.attribute.append(onnx.helper.make_attribute(QAT_DTYPE_ATTR, plan.weights[node.input[0]].data_type))
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[1] in logged:
                node.attribute.append(onnx.helper.make_attribute(LOG_SCALE_ATTR, 1))
    return out


def finish_qat(
    values: Mapping[str, np.ndarray], plan: QatPlan, constants: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Trained values to write into the QDQ graph: planned weights re-quantized with their (kept or learned) scales.

    Learned scales (in `values` as log(scale), see prepare_qat) are written back as scales. `constants` holds
    the QDQ graph's original scale arrays (input scales for the bias links).
    """
    result = dict(values)
    learnable = [*plan.learnable_scales, *plan.activation_scales]
    scales = {name: learned_scale(values[name]) for name in learnable if name in values}
    result.update(scales)
    bias_scales: dict[str, np.ndarray] = {}
    for bias, x_scale, w_scale in plan.bias_links:
        if (w_scale in scales or x_scale in scales) and plan.weights[bias].scale_name not in scales:
            x, w = scales.get(x_scale, constants.get(x_scale)), scales.get(w_scale, _weight_scale(plan, w_scale))
            if x is None or w is None:
                continue
            product = (np.asarray(x, np.float32) * np.asarray(w, np.float32)).astype(np.float32)
            bias_scales[bias] = product.reshape(plan.weights[bias].scale.shape)
    for name, weight in plan.weights.items():
        if name not in values:
            continue
        scale = bias_scales.get(name, scales.get(weight.scale_name))
        result[name] = weight.quantize(np.asarray(values[name]), scale)
        if name in bias_scales:
            result[weight.scale_name] = bias_scales[name]
    return result


def learned_scale(log_value: np.ndarray) -> np.ndarray:
    """A learned scale from its trained log value (kept positive and finite)."""
    return np.exp(np.clip(np.asarray(log_value, np.float64), -80.0, 80.0)).astype(np.float32)


def _weight_scale(plan: QatPlan, scale_name: str) -> np.ndarray | None:
    return next((w.scale for w in plan.weights.values() if w.scale_name == scale_name), None)
