"""int8 storage for Conv weights with float compute: int8 size without dynamic ConvInteger's slowdown.

onnxruntime's dynamic ConvInteger runs several times slower than float Conv on CPU, so dynamic mode
stores Conv weights as per-output-channel int8 and rebuilds them with Cast * scale. onnxruntime
constant-folds Cast and Mul at session start (it does not fold DequantizeLinear), so the Conv keeps
constant float weights and its fast NCHWc kernels.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from compression.quantization.graph_prep import _drop_unused_initializers


def conv_weights_to_int8(model: ir.Model, exclude: set[str], only: set[str] | None = None) -> int:
    """Replace float32 constant Conv weights (all, or those named in `only`) with int8 * per-channel scale."""
    graph = model.graph
    done = 0
    for node in list(graph):
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or node.name in exclude:
            continue
        if only is not None and node.name not in only:
            continue
        weight = node.inputs[1]
        if weight is None or weight.const_value is None or not weight.is_initializer():
            continue
        values = weight.const_value.numpy()
        if values.dtype != np.float32 or values.ndim < 3:
            continue
        flat = np.abs(values.reshape(values.shape[0], -1))
        scale = np.maximum(flat.max(axis=1), 1e-12) / 127.0
        broadcast = scale.reshape(-1, *([1] * (values.ndim - 1)))
        quantized = np.clip(np.round(values / broadcast), -127, 127).astype(np.int8)
        base = weight.name or f"conv{done}_w"
        q_value = _initializer(graph, f"{base}_int8", quantized)
        s_value = _initializer(graph, f"{base}_scale", np.asarray(broadcast, dtype=np.float32))
        cast = ir.node("Cast", [q_value], attributes={"to": ir.DataType.FLOAT}, name=f"{base}_cast")
        mul = ir.node("Mul", [cast.outputs[0], s_value], name=f"{base}_rescale")
        mul.outputs[0].name = f"{base}_dequantized"
        mul.outputs[0].dtype = ir.DataType.FLOAT
        mul.outputs[0].shape = ir.Shape(values.shape)
        graph.insert_before(node, [cast, mul])
        node.replace_input_with(1, mul.outputs[0])
        done += 1
    _drop_unused_initializers(graph)
    return done


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.shape = ir.Shape(array.shape)
    value.dtype = value.const_value.dtype
    graph.register_initializer(value)
    return value
