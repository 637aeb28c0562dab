"""Weight storage with float compute: weights stored int8 (or float16) on disk, rebuilt to float in the graph.

Every weight a weight-bearing op reads (Conv, ConvTranspose, MatMul, Gemm, LSTM/GRU/RNN W and R, Gather on
an embedding table, contrib Attention) is stored as symmetric int8 with one float scale per output channel
(per tensor where the tensor has no channel axis), followed by a rebuild node whose output keeps the weight's
original name. Every reader, a second node sharing the weight or an If/Loop/Scan body reading it from an outer
scope, thus reads the same float values as before, and nothing has to be renamed.

int8 has two rebuilds:

- `cast_mul` (default): `Cast(int8) * scale`. onnxruntime constant-folds Cast and Mul when a session starts
  (it does not fold DequantizeLinear while its QDQ optimizations are on), so the ops compute on constant
  float weights with their usual kernels: float latency, int8 file.
- `dequantize_linear`: `DequantizeLinear(int8, scale, axis)`, the standard QDQ form other runtimes recognise.
  onnxruntime runs it on every inference (per-axis needs opset >= 13; below that the scale is per tensor).

float16 storage (`dtype="float16"`) is `Cast(float16)` to float, folded the same way: half the bytes, with a
relative rounding error of about 5e-4 per weight instead of int8's 1/254 of the channel's largest weight, for
graphs whose outputs do not survive int8 weights (near-tied classes, softmax steps).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compression.graph_names import iter_graphs
from compression.model_info import default_opset, iter_nodes

Rebuild = Literal["cast_mul", "dequantize_linear"]
StorageType = Literal["int8", "float16"]
FLOAT16_MAX = 65504.0
STANDARD = ("", "ai.onnx")
# op type -> (domain, input slots that carry weights)
WEIGHT_SLOTS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "Conv": (STANDARD, (1,)),
    "ConvTranspose": (STANDARD, (1,)),
    "MatMul": (STANDARD, (0, 1)),
    "Gemm": (STANDARD, (0, 1)),
    "LSTM": (STANDARD, (1, 2)),
    "GRU": (STANDARD, (1, 2)),
    "RNN": (STANDARD, (1, 2)),
    "Gather": (STANDARD, (0,)),
    "Attention": (("com.microsoft",), (1,)),
}
WEIGHT_OPS = frozenset(WEIGHT_SLOTS)
# ops that pass a weight on to a weight-bearing op with another layout (an exported LSTM slices its gates and
# concatenates them in onnx's order, a tied embedding is transposed): what they read is still a weight
FORWARDERS = frozenset({"Slice", "Transpose", "Reshape", "Split", "Squeeze", "Unsqueeze", "Identity", "Concat"})
MAX_FORWARDS = 4
MIN_CAST_MUL_OPSET = 7  # multidirectional broadcasting of Mul
MIN_DEQUANTIZE_OPSET = 10
PER_AXIS_DEQUANTIZE_OPSET = 13


@dataclass
class StoredWeights:
    """What `store_weights` rewrote: tensors, and their bytes before (float32) and after (int8 + scales)."""

    tensors: int = 0
    float_bytes: int = 0
    stored_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"tensors": self.tensors, "float_bytes": self.float_bytes, "stored_bytes": self.stored_bytes}


@dataclass
class _Reader:
    node: onnx.NodeProto
    slot: int
    forwarded: bool = False  # reached through layout ops (Slice, Transpose, ...): the op's channel axis is unknown


def store_weights(
    model: onnx.ModelProto,
    *,
    dtype: StorageType = "int8",
    op_types: Iterable[str] = WEIGHT_OPS,
    exclude: set[str] | None = None,
    only: set[str] | None = None,
    min_elements: int = 1,
    per_channel: bool = True,
    rebuild: Rebuild = "cast_mul",
) -> StoredWeights:
    """Store the float32 weights read by `op_types` nodes as int8 + scale (or float16), in place; bodies included.

    A weight is skipped when any node reading it as a weight is in `exclude` (kept float), when `only` is
    given and none of its weight readers is in it, when it has fewer than `min_elements` values, or (float16)
    when a value exceeds float16's range.
    """
    opset = default_opset(model)
    if opset < MIN_CAST_MUL_OPSET or (rebuild == "dequantize_linear" and opset < MIN_DEQUANTIZE_OPSET):
        return StoredWeights()
    kinds = set(op_types)
    exclude = exclude or set()
    taken = _all_names(model.graph)
    stats = StoredWeights()
    for scope in reversed(list(iter_graphs(model.graph))):  # bodies before the graphs holding them
        readers = _weight_readers(scope, kinds)
        added: list[onnx.NodeProto] = []
        kept: list[onnx.TensorProto] = []
        new_inits: list[onnx.TensorProto] = []
        for init in scope.initializer:
            found = readers.get(init.name, [])
            names = {reader.node.name for reader in found}
            if (
                not found
                or init.data_type != onnx.TensorProto.FLOAT
                or names & exclude
                or (only is not None and not names & only)
                or math.prod(init.dims) < min_elements
            ):
                kept.append(init)
                continue
            values = numpy_helper.to_array(init)
            if dtype == "float16":
                if values.size and np.abs(values).max() > FLOAT16_MAX:
                    kept.append(init)
                    continue
                nodes, tensors = _rebuild_float16(init.name, values, taken)
                added += nodes
                new_inits += tensors
                stats.tensors += 1
                stats.float_bytes += values.nbytes
                stats.stored_bytes += sum(numpy_helper.to_array(t).nbytes for t in tensors)
                continue
            keep_axes = _channel_axes(found[0], values.ndim) if per_channel else ()
            if rebuild == "dequantize_linear":  # one axis at most, and only from opset 13
                keep_axes = keep_axes[-1:] if opset >= PER_AXIS_DEQUANTIZE_OPSET else ()
            quantized, scale = _quantize(values, keep_axes)
            nodes, tensors = _rebuild(init.name, quantized, scale, keep_axes, rebuild, opset, taken)
            added += nodes
            new_inits += tensors
            stats.tensors += 1
            stats.float_bytes += values.nbytes
            stats.stored_bytes += sum(numpy_helper.to_array(t).nbytes for t in tensors)
        if not added:
            continue
        stored = {node.output[0] for node in added}
        del scope.initializer[:]
        scope.initializer.extend(kept + new_inits)
        if scope is model.graph:  # an initializer also listed as a graph input (IR < 4): no longer overridable
            remaining = [value for value in scope.input if value.name not in stored]
            del scope.input[:]
            scope.input.extend(remaining)
        existing = list(scope.node)
        del scope.node[:]
        scope.node.extend(added + existing)
    return stats


def weight_nodes(model: onnx.ModelProto, op_types: Iterable[str] = WEIGHT_OPS, min_elements: int = 1) -> list[str]:
    """Names of the nodes (bodies included) whose weights `store_weights` would store int8."""
    kinds = set(op_types)
    names: list[str] = []
    for scope in iter_graphs(model.graph):
        readers = _weight_readers(scope, kinds)
        for init in scope.initializer:
            if init.data_type != onnx.TensorProto.FLOAT or math.prod(init.dims) < min_elements:
                continue
            names += [reader.node.name for reader in readers.get(init.name, []) if reader.node.name]
    return list(dict.fromkeys(names))


def _weight_readers(scope: onnx.GraphProto, kinds: set[str]) -> dict[str, list[_Reader]]:
    """Initializer name -> the weight-bearing nodes reading it as a weight, in `scope` and in its bodies.

    ONNX forbids a body from redefining an outer name, so a name read in a body and defined as an initializer
    of `scope` is that initializer.
    """
    found: dict[str, list[_Reader]] = {}
    sources: dict[str, list[str]] = {}  # a layout op's output -> the data it is made of
    for node in iter_nodes(scope):
        if node.op_type in FORWARDERS and node.domain in STANDARD and node.input and node.input[0]:
            data = [name for name in node.input if name] if node.op_type == "Concat" else [node.input[0]]
            sources.update({name: data for name in node.output if name})
        spec = WEIGHT_SLOTS.get(node.op_type)
        if spec is None or node.op_type not in kinds or node.domain not in spec[0]:
            continue
        for slot in spec[1]:
            if slot < len(node.input) and node.input[slot]:
                found.setdefault(node.input[slot], []).append(_Reader(node, slot))
    for name, readers in list(found.items()):  # follow each weight slot back through layout ops
        forwarded = [_Reader(r.node, r.slot, forwarded=True) for r in readers]
        frontier, seen = [name], {name}
        for _ in range(MAX_FORWARDS):
            frontier = [src for out in frontier for src in sources.get(out, []) if src not in seen]
            seen.update(frontier)
            for source in frontier:
                found.setdefault(source, []).extend(forwarded)
    return found


def _channel_axes(reader: _Reader, ndim: int) -> tuple[int, ...]:
    """Axes that keep their own scale: the output channels of the op reading the weight."""
    node, slot = reader.node, reader.slot
    attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
    if ndim < 2:
        return ()
    if reader.forwarded:  # the op sees another layout: one scale per row of the stored tensor
        return (0,)
    op = node.op_type
    if op == "Conv":
        return (0,)
    if op == "ConvTranspose":
        return (1,) if attrs.get("group", 1) == 1 else (0,)
    if op == "MatMul":
        return (ndim - 1,) if slot == 1 else (ndim - 2,)
    if op == "Gemm":
        if slot == 1:
            return (0,) if attrs.get("transB", 0) else (1,)
        return (1,) if attrs.get("transA", 0) else (0,)
    if op in ("LSTM", "GRU", "RNN"):
        return (0, 1) if ndim == 3 else ()
    if op == "Gather":
        return (0,) if attrs.get("axis", 0) == 0 else ()
    if op == "Attention":
        return (1,)
    return ()


def _quantize(values: np.ndarray, keep_axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per index of `keep_axes` (broadcastable to `values`)."""
    reduce = tuple(axis for axis in range(values.ndim) if axis not in keep_axes)
    peak = np.abs(values).max(axis=reduce, keepdims=True) if values.size else np.zeros([1] * values.ndim)
    scale = (np.maximum(peak, 1e-12) / 127.0).astype(np.float32)
    quantized = np.clip(np.round(values / scale), -127, 127).astype(np.int8)
    return quantized, scale


def _rebuild(
    name: str,
    quantized: np.ndarray,
    scale: np.ndarray,
    keep_axes: tuple[int, ...],
    rebuild: Rebuild,
    opset: int,
    taken: set[str],
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes producing the float weight under its own name, and the int8/scale initializers they read."""
    q_name, s_name = _fresh(f"{name}_int8", taken), _fresh(f"{name}_scale", taken)
    q_tensor = numpy_helper.from_array(quantized, q_name)
    if rebuild == "cast_mul":
        s_tensor = numpy_helper.from_array(scale, s_name)
        cast_out = _fresh(f"{name}_int8_float", taken)
        cast = helper.make_node("Cast", [q_name], [cast_out], name=_fresh(f"{name}_cast", taken), to=1)
        mul = helper.make_node("Mul", [cast_out, s_name], [name], name=_fresh(f"{name}_rescale", taken))
        return [cast, mul], [q_tensor, s_tensor]
    attrs = {"axis": keep_axes[0]} if keep_axes else {}
    s_tensor = numpy_helper.from_array(scale.reshape(-1) if keep_axes else scale.reshape(()), s_name)
    node = helper.make_node("DequantizeLinear", [q_name, s_name], [name], name=_fresh(f"{name}_dq", taken), **attrs)
    return [node], [q_tensor, s_tensor]


def _rebuild_float16(
    name: str, values: np.ndarray, taken: set[str]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    half_name = _fresh(f"{name}_fp16", taken)
    tensor = numpy_helper.from_array(values.astype(np.float16), half_name)
    cast = helper.make_node("Cast", [half_name], [name], name=_fresh(f"{name}_cast", taken), to=1)
    return [cast], [tensor]


def _fresh(base: str, taken: set[str]) -> str:
    name = base
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for scope in iter_graphs(graph):
        names |= {value.name for value in scope.input} | {value.name for value in scope.output}
        names |= {init.name for init in scope.initializer}
        names |= {value.name for value in scope.value_info}
        for node in scope.node:
            names.add(node.name)
            names.update(node.input)
            names.update(node.output)
    return names
