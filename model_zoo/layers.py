"""Emit the ONNX nodes of common torch layers, copying their trained weights as initializers.

Initializer names follow the torch ``state_dict`` keys (``conv1.weight``) so a compressed graph can be
traced back to the module it came from.
"""

from __future__ import annotations

from torch import nn

from model_zoo.onnx_graph import GraphBuilder, to_numpy


def conv(b: GraphBuilder, name: str, m: nn.Conv2d, x: str) -> str:
    """nn.Conv2d (zeros padding) -> Conv."""
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise ValueError(f"{name}: only explicit zero padding is mirrored")
    inputs = [x, b.const(f"{name}.weight", to_numpy(m.weight))]
    if m.bias is not None:
        inputs.append(b.const(f"{name}.bias", to_numpy(m.bias)))
    pad_h, pad_w = m.padding
    return b.op(
        "Conv",
        inputs,
        name=name,
        kernel_shape=list(m.kernel_size),
        strides=list(m.stride),
        pads=[pad_h, pad_w, pad_h, pad_w],
        dilations=list(m.dilation),
        group=m.groups,
    )


def batch_norm(b: GraphBuilder, name: str, m: nn.BatchNorm2d, x: str) -> str:
    """Eval-mode nn.BatchNorm2d -> BatchNormalization with the running statistics."""
    inputs = [
        x,
        b.const(f"{name}.weight", to_numpy(m.weight)),
        b.const(f"{name}.bias", to_numpy(m.bias)),
        b.const(f"{name}.running_mean", to_numpy(m.running_mean)),
        b.const(f"{name}.running_var", to_numpy(m.running_var)),
    ]
    return b.op("BatchNormalization", inputs, name=name, epsilon=float(m.eps))


def gemm(b: GraphBuilder, name: str, m: nn.Linear, x: str, output: str | None = None) -> str:
    """nn.Linear on a 2-D input -> Gemm(transB=1), the form pruning passes expect for dense layers."""
    inputs = [x, b.const(f"{name}.weight", to_numpy(m.weight))]
    if m.bias is not None:
        inputs.append(b.const(f"{name}.bias", to_numpy(m.bias)))
    return b.op("Gemm", inputs, output=output, name=name, transB=1)


def matmul_add(b: GraphBuilder, name: str, m: nn.Linear, x: str, output: str | None = None) -> str:
    """nn.Linear on an N-D input -> MatMul with the transposed weight, then Add bias."""
    weight = b.const(f"{name}.weight", to_numpy(m.weight).T)
    if m.bias is None:
        return b.op("MatMul", [x, weight], output=output, name=f"{name}/MatMul")
    y = b.op("MatMul", [x, weight], name=f"{name}/MatMul")
    return b.op("Add", [y, b.const(f"{name}.bias", to_numpy(m.bias))], output=output, name=f"{name}/Add")


def layer_norm(b: GraphBuilder, name: str, m: nn.LayerNorm, x: str) -> str:
    """nn.LayerNorm over the last axis -> LayerNormalization."""
    if len(m.normalized_shape) != 1:
        raise ValueError(f"{name}: only last-axis LayerNorm is mirrored")
    inputs = [x, b.const(f"{name}.weight", to_numpy(m.weight)), b.const(f"{name}.bias", to_numpy(m.bias))]
    return b.op("LayerNormalization", inputs, name=name, axis=-1, epsilon=float(m.eps))


def relu(b: GraphBuilder, name: str, x: str) -> str:
    """ReLU activation."""
    return b.op("Relu", [x], name=name)
