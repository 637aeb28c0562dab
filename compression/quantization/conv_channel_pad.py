"""Pad the input channels of QDQ Convs to a multiple of 4 so onnxruntime runs them with its fast int8 kernel.

onnxruntime's QLinearConv has two x86 paths: a direct symmetric-weight kernel (MLAS ConvSym: AVX2, AVX512,
VNNI) and a fallback im2col + int8 GEMM. The direct kernel needs the input channel count to be a multiple
of 4; a 1-channel (grayscale) or 3-channel (RGB) stem falls back, and that fallback is slower than the float
Conv (residual_cnn stem: 73 us int8 vs 21 us float, batch 32, 1 thread), so the stem used to be kept float,
which costs a layout change, a QuantizeLinear and a Transpose after it.

The rewrite is exact: the quantized input gets extra channels holding its zero-point (real value 0) and the
weights extra input channels of 0, so every output is the same sum (on x86 without VNNI only with 7-bit weights,
which the engine uses there: onnxruntime's u8s8 kernel saturates pairs of products in int16, and the padding
changes which products pair up). Only top-level Convs whose weight
zero-points are all zero (what the direct kernel needs anyway) and whose input has one scale and
zero-point are padded; bodies of If/Loop/Scan are left alone and every new name is unused anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compression.graph_names import drop_unused_initializers, iter_graphs, used_names

CHANNEL_MULTIPLE = 4  # MLAS ConvSym: InputChannels % 4 == 0
PAD_MIN_OPSET = 11  # Pad takes pads and the constant as inputs


def pad_conv_channels(model: onnx.ModelProto, multiple: int = CHANNEL_MULTIPLE) -> list[str]:
    """Pad the input channels of eligible QDQ Convs in place; returns the names of the padded Convs."""
    if _default_opset(model) < PAD_MIN_OPSET:
        return []
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    taken = {name for scope in iter_graphs(graph) for node in scope.node for name in (*node.input, *node.output)}
    taken |= {init.name for scope in iter_graphs(graph) for init in scope.initializer}
    taken |= {node.name for scope in iter_graphs(graph) for node in scope.node}

    def fresh(base: str) -> str:
        index = 0
        while f"{base}_{index}" in taken:
            index += 1
        taken.add(f"{base}_{index}")
        return f"{base}_{index}"

    padded: list[str] = []
    replaced: list[onnx.NodeProto] = []
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        plan = _plan(node, producer, initializers, multiple)
        if plan is None:
            new_nodes.append(node)
            continue
        x_dq, w_dq, weight, extra = plan
        rank = weight.ndim
        pads = np.zeros(2 * rank, dtype=np.int64)
        pads[rank + 1] = extra  # end of the channel axis
        pads_name = fresh("channel_pads")  # the channel axis is 1 in both the input and the weight
        graph.initializer.append(numpy_helper.from_array(pads, pads_name))
        pad_inputs = [x_dq.input[0], pads_name] + ([x_dq.input[2]] if len(x_dq.input) > 2 and x_dq.input[2] else [])
        q_padded, x_padded = fresh("channel_padded_q"), fresh("channel_padded_x")
        w_padded, w_float = fresh("channel_padded_wq"), fresh("channel_padded_w")
        # the weight is padded by a Pad node onnxruntime constant-folds at load: the file keeps its size
        new_nodes.append(helper.make_node("Pad", [w_dq.input[0], pads_name], [w_padded], name=fresh("w_pad")))
        new_nodes.append(helper.make_node("Pad", pad_inputs, [q_padded], name=fresh(f"{node.name}_channel_pad")))
        x_new = helper.make_node("DequantizeLinear", [q_padded, *x_dq.input[1:]], [x_padded], name=fresh("dq_x"))
        x_new.attribute.extend(x_dq.attribute)
        w_new = helper.make_node("DequantizeLinear", [w_padded, *w_dq.input[1:]], [w_float], name=fresh("dq_w"))
        w_new.attribute.extend(w_dq.attribute)
        new_nodes += [x_new, w_new]
        node.input[0], node.input[1] = x_padded, w_float
        replaced += [
            onnx.NodeProto.FromString(x_dq.SerializeToString()),
            onnx.NodeProto.FromString(w_dq.SerializeToString()),
        ]
        new_nodes.append(node)
        padded.append(node.name)
    if not padded:
        return []
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_dead(graph, replaced)
    return padded


def conv_weight_dims(model: onnx.ModelProto) -> Iterator[tuple[onnx.NodeProto, list[int]]]:
    """Every top-level Conv whose weight is an initializer, with that weight's dims."""
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) >= 2 and node.input[1] in shapes:
            yield node, shapes[node.input[1]]


def paddable_convs(model: onnx.ModelProto, multiple: int = CHANNEL_MULTIPLE) -> list[str]:
    """Top-level float Convs (weights as initializers, one group) whose input channels are not a multiple."""
    return [
        node.name
        for node, dims in conv_weight_dims(model)
        if len(dims) >= 3 and dims[1] % multiple and not any(a.name == "group" and a.i != 1 for a in node.attribute)
    ]


def _plan(
    node: onnx.NodeProto,
    producer: dict[str, onnx.NodeProto],
    initializers: dict[str, onnx.TensorProto],
    multiple: int,
) -> tuple[onnx.NodeProto, onnx.NodeProto, np.ndarray, int] | None:
    """(input DQ, weight DQ, int8 weight, channels to add) when `node` is a Conv worth padding, else None."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    if any(attr.name == "group" and attr.i != 1 for attr in node.attribute):
        return None
    x_dq, w_dq = producer.get(node.input[0]), producer.get(node.input[1])
    if x_dq is None or w_dq is None or x_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
        return None
    if x_dq.input[0] in initializers or w_dq.input[0] not in initializers:
        return None
    if not all(_scalar(initializers.get(name)) for name in x_dq.input[1:] if name):
        return None  # one scale and zero-point for the input (the direct kernel needs that too)
    weight = numpy_helper.to_array(initializers[w_dq.input[0]])
    if weight.dtype != np.int8 or weight.ndim < 3:
        return None
    if len(w_dq.input) > 2 and w_dq.input[2]:
        zero_point = initializers.get(w_dq.input[2])
        if zero_point is None or np.any(numpy_helper.to_array(zero_point)):
            return None
    extra = -weight.shape[1] % multiple
    return (x_dq, w_dq, weight, extra) if extra else None


def _scalar(init: onnx.TensorProto | None) -> bool:
    return init is not None and int(np.prod(init.dims)) == 1


def _default_opset(model: onnx.ModelProto) -> int:
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)


def _drop_dead(graph: onnx.GraphProto, replaced: list[onnx.NodeProto]) -> None:
    """Remove the DequantizeLinear nodes the rewrite replaced once nothing reads them (and what only they read)."""
    read = used_names(graph) | {value.name for value in graph.output}
    dead = {n.output[0] for n in replaced if n.output[0] not in read}
    if not dead:
        return
    released = {name for n in replaced if n.output[0] in dead for name in n.input}
    kept = [n for n in graph.node if not (n.op_type == "DequantizeLinear" and n.output[0] in dead)]
    del graph.node[:]
    graph.node.extend(kept)
    drop_unused_initializers(graph, released)
