"""Graph rewrites that let onnxruntime's quantizer reach weights it would otherwise skip."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from compression.graph_names import used_names


def gemm_to_matmul(model: ir.Model) -> int:
    """Rewrite plain Gemm (alpha=beta=1, no transA, constant B) as MatMul + Add.

    Dynamic quantization has an integer kernel for MatMul but not for Gemm, so without this
    the largest weights of most classifiers stay float32.
    """
    rewritten = 0
    graph = model.graph
    for node in list(graph):
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = node.attributes
        alpha = attrs["alpha"].as_float() if "alpha" in attrs else 1.0
        beta = attrs["beta"].as_float() if "beta" in attrs else 1.0
        trans_a = attrs["transA"].as_int() if "transA" in attrs else 0
        trans_b = attrs["transB"].as_int() if "transB" in attrs else 0
        a, b = node.inputs[0], node.inputs[1]
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if alpha != 1.0 or beta != 1.0 or trans_a or b is None or b.const_value is None or not b.is_initializer():
            continue
        weight = b
        if trans_b:
            array = np.ascontiguousarray(b.const_value.numpy().T)
            weight = ir.Value(name=f"{b.name}_T", const_value=ir.tensor(array, name=f"{b.name}_T"))
            weight.shape = ir.Shape(array.shape)
            weight.dtype = b.dtype
            graph.register_initializer(weight)
        base = node.name or f"Gemm_{rewritten}"
        matmul = ir.node("MatMul", [a, weight], name=f"{base}_matmul")
        new_nodes = [matmul]
        result = matmul.outputs[0]
        if c is not None:
            add = ir.node("Add", [result, c], name=f"{base}_bias")
            new_nodes.append(add)
            result = add.outputs[0]
        old = node.outputs[0]
        result.name, result.shape, result.type = old.name, old.shape, old.type
        old.name = None
        graph.insert_before(node, new_nodes)
        old.replace_all_uses_with(result, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        rewritten += 1
    _drop_unused_initializers(graph)
    return rewritten


def flatten_gemm_biases(model: ir.Model) -> int:
    """Give every Gemm a 1-D constant bias of its output width ([1, N] and [1] biases are broadcast forms).

    onnxruntime's static quantizer indexes the bias per output channel: a [1, N] bias makes it fail with
    "truth value of an array ... is ambiguous" and a [1] bias with an IndexError under per-channel
    quantization (exporters such as jax2onnx and tf2onnx write both). The values Gemm computes are unchanged.
    """
    flattened = 0
    graph = model.graph
    for node in list(graph):
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 3:
            continue
        weight, bias = node.inputs[1], node.inputs[2]
        if bias is None or bias.const_value is None or not bias.is_initializer() or bias.is_graph_input():
            continue
        if weight is None or weight.const_value is None or len(weight.const_value.shape) != 2:
            continue
        trans_b = node.attributes["transB"].as_int() if "transB" in node.attributes else 0
        width = int(weight.const_value.shape[0] if trans_b else weight.const_value.shape[1])
        values = bias.const_value.numpy()
        if values.ndim == 1 and values.shape[0] == width:
            continue
        if values.size not in (1, width) or (values.ndim == 2 and values.shape[0] != 1) or values.ndim > 2:
            continue  # a per-row [M, N] bias is not a channel bias: leave it
        array = np.ascontiguousarray(np.broadcast_to(values.reshape(-1), (width,)))
        name = f"{bias.name}_flat{flattened}" if bias.name else f"gemm_bias_flat{flattened}"
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        value.shape = ir.Shape(array.shape)
        value.dtype = bias.dtype
        graph.register_initializer(value)
        node.replace_input_with(2, value)
        flattened += 1
    if flattened:
        _drop_unused_initializers(graph)
    return flattened


def _drop_unused_initializers(graph: ir.Graph) -> None:
    """Remove initializers nothing reads, If/Loop/Scan bodies included (they read outer names)."""
    used = used_names(graph)
    for name, value in list(graph.initializers.items()):
        if name not in used and not value.uses() and not value.is_graph_output() and not value.is_graph_input():
            del graph.initializers[name]


def lift_constants(model: ir.Model, min_elements: int) -> int:
    """Turn `Constant` weights into initializers, subgraphs included.

    onnxruntime's quantizers only look at initializers, so weights that Paddle and some PyTorch
    exports keep in `Constant` nodes would silently stay float.
    """
    from onnx_ir.passes.common import LiftConstantsToInitializersPass

    before = _count_constants(model.graph)
    LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=min_elements)(model)
    return before - _count_constants(model.graph)


def _count_constants(graph: ir.Graph) -> int:
    return sum(1 for node in ir.traversal.RecursiveGraphIterator(graph) if node.op_type == "Constant")


def default_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
